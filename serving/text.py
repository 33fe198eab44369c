"""Plain text for people at a terminal: tables, sizes, times, and the service's versions.

`format_versions` is what `ebr query versions` and the demo print of a service's
`/v1/versions` answer; it lives here, below both, so the demo (orchestration) needs
nothing from the CLI. The table, size and time helpers it uses are the same ones every
`ebr` command prints with (`cli.output` names them for the CLI).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

# Tables are cut to this many columns unless --wide (version names are 70 characters).
WIDTH = 120
MIN_CUT_WIDTH = 12
CUT_MARK = "…"
CUT_NOTE = (
    f"({CUT_MARK} marks a name cut to fit {WIDTH} columns; any unique prefix of a version names it; --wide shows all)"
)


def table(
    headers: Sequence[str], rows: Sequence[Sequence[object]], *, cut: Sequence[int] = (), wide: bool = False
) -> str:
    """A plain-text table. Unless `wide`, the columns listed in `cut` (indexes; names,
    never figures) are shortened at their end, widest first, until the table fits in
    `WIDTH` columns; a cut cell ends in "…" and a note says so under the table."""
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    if not wide:
        floor = {i: max(MIN_CUT_WIDTH, len(cells[0][i])) for i in cut}
        while sum(widths) + 2 * (len(widths) - 1) > WIDTH:
            shrinkable = [i for i in cut if widths[i] > floor[i]]
            if not shrinkable:
                break
            widths[max(shrinkable, key=lambda i: widths[i])] -= 1
    was_cut = False
    for row in cells[1:]:
        for i, cell in enumerate(row):
            if len(cell) > widths[i]:
                row[i], was_cut = cell[: widths[i] - 1] + CUT_MARK, True
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    if was_cut:
        lines.append(CUT_NOTE)
    return "\n".join(lines)


def short_time(iso: str | None, wide: bool = False) -> str:
    """ "2026-11-23 18:51:00" (UTC) from an ISO 8601 time; as stored with `wide`."""
    if not iso or wide:
        return iso or ""
    try:
        return datetime.fromisoformat(iso).strftime("%Y-%m-%d %H:%M:%S")
    except ValueError:
        return iso


def human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def format_versions(versions: dict, *, wide: bool = False) -> str:
    """A service's or a router's `/v1/versions` answer as text: what is served, the last poll, refusals."""
    lines = []
    served = versions.get("served")
    if served is None:
        lines.append(f"not ready: {versions['last_reload']['detail']}")
    else:
        lines.append(
            f"model {served['model_version']}, dim {served['dim']}, state {served['generation']} since {served['since']}"
        )
        rows = [
            (kind, c["version"], short_time(c["served_since"], wide), c["count"], human_bytes(c["memory_bytes"]))
            for kind, c in served["components"].items()
        ]
        lines.append(table(["kind", "version", "served since (UTC)", "items", "memory"], rows, cut=(1,), wide=wide))
    lines.append(
        f"last poll {versions['last_poll_at']} ({versions['seconds_since_last_successful_poll']:.1f} s ago): "
        f"{versions['last_reload']['action']}"
    )
    for refusal in versions.get("refused", []):
        lines.append(f"refused {refusal['kind']}/{refusal['version']} at {refusal['at']}: {refusal['reason']}")
    return "\n".join(lines)
