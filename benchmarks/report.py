"""A benchmark run rendered: one self-contained HTML page, and the Markdown of results.md.

    python benchmarks/report.py [--results benchmarks/results.json] [--out var/report.html]
    ebr report [--results ...] [--out ...]            (the same, through the CLI)

The plots are drawn afresh from the results (benchmarks/plots.py) and embedded as
base64 data URIs, so the page is one file that can be mailed or attached to a PR. The
page opens on the targets with the plots beside them (one column on a narrow screen);
the tables of figures, every model-quality metric, the run's provenance and the
benchmarks run follow. Wide tables scroll inside their box and long cells wrap. Both
commands write to var/ unless given --out: `make bench` writes benchmarks/report.html,
the copy that is committed with its results.

`markdown(results)` renders the same run as the Markdown tables of benchmarks/results.md,
which benchmarks/run_all.py writes beside results.json.
"""

from __future__ import annotations

import argparse
import base64
import html
import json
import sys
import tempfile
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
# As a script, benchmarks/ is sys.path[0]: the checkout replaces it (benchmarks/__init__.py).
sys.path[:] = [str(REPO), *(p for p in sys.path if Path(p or ".").resolve() not in (REPO, REPO / "benchmarks"))]

from benchmarks import plots  # noqa: E402
from benchmarks.shapes import results_of, sweep_sets  # noqa: E402

DEFAULT_RESULTS = BENCH_DIR / "results.json"
DEFAULT_OUT = REPO / "var" / "report.html"

PLOT_CAPTIONS = {
    "training_history": "Training loss and validation top-100 accuracy per epoch; the dashed line is the epoch chosen on the validation split.",
    "recall_at_k": "Recall@K of the two-tower model against popularity and implicit ALS on the same split.",
    "recall_qps": "Recall@10 against queries/s for each ef: hnswlib against faiss HNSW and exact numpy search.",
    "serving_latency": "Latency of the service at a fixed request rate: steady against during a hot reload.",
    "embedding_throughput": "Beam embedding jobs on DirectRunner against the same SavedModel in a batched Python loop.",
}

CSS = """
body { font-family: -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1600px; color: #222; padding: 0 1em; }
h1 { font-size: 1.6em; } h2 { margin-top: 1.8em; border-bottom: 1px solid #ddd; padding-bottom: .2em; }
table { border-collapse: collapse; margin: .8em 0; font-size: .9em; }
th, td { border: 1px solid #ccc; padding: .3em .6em; text-align: left; vertical-align: top; overflow-wrap: anywhere; }
th, td.met, td.notmet, td.unknown, td:first-child { white-space: nowrap; overflow-wrap: normal; }
.scroll { overflow-x: auto; max-width: 100%; } .scroll td, .scroll th { overflow-wrap: normal; white-space: nowrap; }
.overview { display: grid; grid-template-columns: minmax(0, 1fr) minmax(0, 1fr); gap: 1.5em; align-items: start; }
.overview .plots figure:first-child { margin-top: 0; }
@media (max-width: 1100px) { .overview { grid-template-columns: minmax(0, 1fr); } }
.summary { color: #444; }
th { background: #f4f4f4; }
td.met { background: #e3f5e1; font-weight: bold; } td.notmet { background: #fbe3e3; font-weight: bold; } td.unknown { background: #f4f4f4; }
.note { background: #fff8e1; border-left: 4px solid #f0c000; padding: .5em .8em; margin: .5em 0; }
figure { margin: 1.5em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #555; font-size: .9em; }
code, pre { background: #f6f6f6; font-size: .85em; } pre { padding: .6em; overflow-x: auto; white-space: pre-wrap; }
.meta td:first-child { font-weight: bold; white-space: nowrap; }
"""


def load_results(path: Path) -> dict:
    """The combined results, with an actionable error when there are none."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"no benchmark results at {path}: run `make bench` (or `python benchmarks/run_all.py --quick` "
            "for a smoke run) first, or pass --results FILE"
        )
    try:
        results = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON ({exc}): rerun the benchmarks to rewrite it") from exc
    missing = [k for k in ("benchmarks", "targets", "figures", "machine") if k not in results]
    if missing:
        raise ValueError(f"{path} lacks {', '.join(missing)}: it is not a results file of benchmarks/run_all.py")
    return results


def write_report(results_path: Path, out: Path | None = None) -> Path:
    """Renders RESULTS_PATH to OUT (default: var/report.html); returns OUT."""
    results_path = Path(results_path)
    results = load_results(results_path)
    out = Path(out) if out is not None else DEFAULT_OUT
    with tempfile.TemporaryDirectory(prefix="ebr-report-") as tmp:
        pngs = plots.write_all(results, Path(tmp))
        images = {name: base64.b64encode(path.read_bytes()).decode("ascii") for name, path in pngs.items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_html(results, images, source=str(results_path)))
    return out


def render_html(results: dict, images: dict[str, str], source: str = "") -> str:
    """The page: targets beside the plots (base64 PNGs), then figures, every quality metric,
    provenance, notes and the benchmarks run."""
    e = html.escape
    git, m = results.get("git", {}), results["machine"]
    targets = results["targets"]
    met = sum(1 for t in targets if t["met"] is True)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>EBR benchmarks, {e(results.get('started_at', ''))}</title><style>{CSS}</style></head><body>",
        "<h1>Embedding-based retrieval: benchmark report</h1>",
        f'<p class="summary">{met} of {len(targets)} targets met; {e(results.get("mode", ""))} run of {e(results.get("started_at", ""))} '
        f"at commit <code>{e(str(git.get('commit', ''))[:12])}</code> on {m.get('cpus')} cores "
        '(<a href="#provenance">provenance</a>, <a href="#figures">figures</a>, <a href="#benchmarks">benchmarks run</a>).</p>',
    ]
    parts += [f'<div class="note">{e(note)}</div>' for note in results.get("notes", [])]

    parts += [
        '<div class="overview"><section class="targets">',
        f"<h2>Targets: {met} of {len(targets)} met</h2>",
        "<table><tr><th>issue</th><th>target</th><th>measured</th><th>met</th><th>at the issue's size</th></tr>",
    ]
    for t in targets:
        css, verdict = {True: ("met", "met"), False: ("notmet", "not met"), None: ("unknown", "not measured")}[t["met"]]
        at_size = {True: "yes", False: f"no: {e(t['size'])}", None: ""}[t["at_target_size"]]
        note = f"<br><small>{e(t['note'])}</small>" if t.get("note") else ""
        parts.append(
            f'<tr><td>#{t["issue"]}</td><td>{e(t["target"])}</td><td>{e(t["measured"])}</td><td class="{css}">{verdict}</td>'
            f"<td>{at_size}{note}</td></tr>"
        )
    parts += ["</table></section>", '<section class="plots">', "<h2>Plots</h2>" if images else ""]
    for name, data in images.items():
        parts.append(
            f'<figure id="{e(name)}"><img alt="{e(PLOT_CAPTIONS.get(name, name))}" src="data:image/png;base64,{data}">'
            f"<figcaption>{e(PLOT_CAPTIONS.get(name, name))}</figcaption></figure>"
        )
    parts.append("</section></div>")

    parts += [
        '<h2 id="figures">Figures</h2>',
        "<table><tr><th>area</th><th>measurement</th><th>figure</th><th>measured on</th></tr>",
    ]
    for f in results["figures"]:
        parts.append(
            f"<tr><td>{e(f['area'])}</td><td>{e(f['measurement'])}</td><td>{e(f['text'])}</td><td>{e(f['size'])}</td></tr>"
        )
    parts.append("</table>")
    quality = _quality_table(results)
    if quality:
        parts += ["<h2>Model quality, every metric</h2>", f'<div class="scroll">{quality}</div>']

    parts += [
        '<h2 id="provenance">Provenance</h2>',
        '<table class="meta">',
        _row(
            "run",
            f"{e(results.get('mode', ''))} run, {e(results.get('started_at', ''))} to {e(results.get('finished_at', ''))} "
            f"({results.get('wall_seconds', 0) / 60:.1f} min)",
        ),
        _row("command", f"<code>{e(results.get('command', ''))}</code>"),
        _row(
            "commit",
            f"<code>{e(str(git.get('commit')))}</code> on {e(str(git.get('branch', '')))}: {e(git.get('subject', ''))}"
            + (
                f" ({len(git['uncommitted_paths'])} uncommitted paths in the checkout)"
                if git.get("uncommitted_paths")
                else ""
            ),
        ),
        _row(
            "machine",
            f"{m.get('cpus')} cores, {m.get('memory_gib')} GiB, Python {e(str(m.get('python')))}, {e(str(m.get('platform')))}; "
            f"load average {m.get('load_average_at_start', ['?'])[0]} at the start, {m.get('load_average_at_end', ['?'])[0]} at the end",
        ),
        _row("packages", e(", ".join(f"{k} {v}" for k, v in m.get("packages", {}).items()))),
    ]
    for label, version in results.get("versions", {}).items():
        parts.append(_row(e(label), f"<code>{e(str(version))}</code>"))
    if source:
        parts.append(_row("results file", f"<code>{e(source)}</code>"))
    parts.append("</table>")

    parts += [
        '<h2 id="benchmarks">Benchmarks run</h2>',
        "<table><tr><th>benchmark</th><th>command</th><th>wall s</th><th>status</th></tr>",
    ]
    for b in results["benchmarks"].values():
        if b.get("skipped"):
            status = f"skipped ({e(b.get('reason', ''))})"
        elif b["ok"]:
            status = "ok"
        else:
            status = f"<b>failed: {e(b.get('error', ''))}</b>" + (
                f"<pre>{e(b['output_tail'])}</pre>" if b.get("output_tail") else ""
            )
        parts.append(
            f"<tr><td>{e(b['name'])}</td><td><code>{e(b.get('command', ''))}</code></td><td>{b.get('wall_seconds', '')}</td><td>{status}</td></tr>"
        )
    parts.append("</table>")
    demo = results["benchmarks"].get("demo") or {}
    if demo.get("output_tail"):
        parts += ["<h2>End-to-end demo: the end of its output</h2>", f"<pre>{e(demo['output_tail'])}</pre>"]
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _quality_table(results: dict) -> str:
    mq = (results["benchmarks"].get("model_quality") or {}).get("results")
    if not mq:
        return ""
    columns = (
        "top_k_accuracy@100",
        "recall@10",
        "recall@50",
        "recall@100",
        "recall@500",
        "ndcg@10",
        "cold_recall@100",
        "catalogue_recall@100",
        "coverage@100",
        "language_match@10",
        "country_match@10",
        "oracle_recall@100",
        "eval_users",
        "eval_positives",
    )
    shown = [c for c in columns if any(c in r["metrics"] for r in mq["rows"])]
    rows = [
        "<table><tr><th>dataset</th><th>scorer</th>"
        + "".join(f"<th>{html.escape(c)}</th>" for c in shown)
        + "<th>best epoch</th><th>train examples/s</th></tr>"
    ]
    for r in (r for r in mq["rows"] if not r.get("seed_run")):
        cells = "".join(f"<td>{r['metrics'][c]:.3f}</td>" if c in r["metrics"] else "<td></td>" for c in shown)
        rows.append(
            f"<tr><td>{html.escape(r['dataset'])}</td><td>{html.escape(r['scorer'])}</td>{cells}"
            f"<td>{r.get('best_epoch', '')}</td><td>{r.get('examples_per_second', '')}</td></tr>"
        )
    return "\n".join(rows) + "</table>"


# -- Markdown (results.md) ----------------------------------------------------------------


def markdown(results: dict) -> str:
    """results.json as Markdown: figures, targets, benchmarks run, machine."""
    m = results["machine"]
    lines = [
        f"# Benchmarks ({results['mode']} run, {results['started_at']})",
        "",
        f"Machine: {m['cpus']} cores, {m['memory_gib']} GiB, Python {m['python']}; load average at start "
        f"{m['load_average_at_start'][0]}, at end {m.get('load_average_at_end', ['?'])[0]}. "
        f"Commit `{(results['git'].get('commit') or '?')[:12]}`. Command: `{results['command']}`, "
        f"{results['wall_seconds'] / 60:.1f} min wall.",
        "",
    ]
    lines += [f"> {note}" for note in results.get("notes", [])]
    lines += ["", "## Figures", "", "| area | measurement | figure | measured on |", "|---|---|---|---|"]
    for f in results["figures"]:
        lines.append(f"| {f['area']} | {f['measurement']} | {f['text']} | {f['size']} |")
    for section in (_quality_markdown, _sweep_markdown):
        try:
            lines += section(results["benchmarks"])
        except (KeyError, TypeError, ValueError):
            pass  # the figures table above says what could not be read
    lines += ["", "## Targets", "", "| issue | target | measured | met | at target size |", "|---|---|---|---|---|"]
    for t in results["targets"]:
        verdict = {True: "yes", False: "**no**", None: "not measured"}[t["met"]]
        at_size = {True: "yes", False: f"no ({t['size']})", None: ""}[t["at_target_size"]]
        lines.append(f"| #{t['issue']} | {t['target']} | {t['measured']} | {verdict} | {at_size} |")
    lines += ["", "## Benchmarks run", "", "| benchmark | command | wall s | status |", "|---|---|---|---|"]
    for b in results["benchmarks"].values():
        status = "skipped" if b.get("skipped") else ("ok" if b["ok"] else "FAILED: " + b["error"].splitlines()[0])
        lines.append(f"| {b['name']} | `{b.get('command', '')}` | {b.get('wall_seconds', '')} | {status} |")
    if results.get("versions"):
        lines += ["", "## Versions the figures came from", "", "| what | version |", "|---|---|"]
        lines += [f"| {what} | `{version}` |" for what, version in results["versions"].items()]
    plots = results.get("plots") or {}
    if plots:
        lines += ["", "## Plots", ""]
        lines += [f"![{name}]({path})" for name, path in plots.items()]
    return "\n".join(lines) + "\n"


def _quality_markdown(benchmarks: dict) -> list[str]:
    mq = results_of(benchmarks, "model_quality")
    if not mq:
        return []
    from benchmarks import model_quality  # here: it sets TF_USE_LEGACY_KERAS at import

    tables = model_quality.markdown(mq["rows"])
    return ["", f"### Model quality (`{mq.get('command', '')}`)", *tables.splitlines()]


def _sweep_markdown(benchmarks: dict) -> list[str]:
    ib = results_of(benchmarks, "index_build")
    if not ib:
        return []
    exact = ib["exact"]["qps_single_query"]
    lines = [
        "",
        f"### Recall vs QPS ({ib['data']['n']:,} x {ib['data']['dim']}, 1 thread, 1 query at a time; exact numpy {exact:,.0f} QPS)",
        "",
        "| library | queries | ef | recall@10 | QPS | x exact |",
        "|---|---|---|---|---|---|",
    ]
    for lib in ("hnswlib", "faiss"):
        for query_set, rows in sweep_sets(ib.get(lib, {}).get("sweep", [])).items():
            for r in rows:
                lines.append(
                    f"| {lib} | {query_set or ''} | {r['ef']} | {r['recall_at_10']:.4f} | "
                    f"{r['qps']:,.0f} | {r['qps'] / exact:.1f} |"
                )
    return lines


def _row(label: str, value: str) -> str:
    return f"<tr><td>{label}</td><td>{value}</td></tr>"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, default=DEFAULT_RESULTS)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="default: %(default)s")
    args = parser.parse_args(argv)
    try:
        out = write_report(args.results, args.out)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
