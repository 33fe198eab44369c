"""`ebr artifacts ...`: list, inspect, verify, roll back and prune versioned artifacts."""

from __future__ import annotations

from argparse import Namespace

from artifacts import ArtifactError, ArtifactStore, UnknownVersionError
from cli.hints import print_demo_root_hint
from cli.output import human_bytes, short_time, table
from config import EbrConfig


def list_versions(cfg: EbrConfig, args: Namespace) -> None:
    store = ArtifactStore.from_config(cfg)
    if not args.kind:
        kinds = store.kinds()
        if not kinds:
            print(f"no artifacts under {store.uri} yet")
            print_demo_root_hint(cfg)
            return
        rows = []
        for name in kinds:
            kind = store.kind(name)
            versions = kind.versions()
            complete = sum(v.complete for v in versions)
            try:
                latest = kind.latest() or "-"
            except ArtifactError:  # a bad pointer is that kind's problem; list the others
                latest = f"UNREADABLE (ebr artifacts list {name})"
            rows.append((name, latest, complete, len(versions) - complete))
        print(table(["kind", "LATEST", "complete", "incomplete"], rows, cut=(1,), wide=args.wide))
        return
    kind = store.kind(args.kind)
    latest = kind.latest()
    rows = []
    for v in kind.versions():
        m = v.manifest
        rows.append(
            (
                ("* " if v.name == latest else "  ") + v.name,
                "complete" if v.complete else ("CORRUPT MANIFEST" if v.problem else "INCOMPLETE"),
                short_time(m.created_at, args.wide) if m else "",
                len(m.files) if m else "",
                human_bytes(m.total_bytes) if m else "",
                ", ".join(f"{k}={val}" for k, val in m.parents.items()) if m else "",
            )
        )
    if not rows:
        print(f"{args.kind} has no versions under {store.uri}")
        print_demo_root_hint(cfg)
        return
    print(
        table(
            ["version (* = LATEST)", "state", "created (UTC)", "files", "size", "parents"],
            rows,
            cut=(0, 5),
            wide=args.wide,
        )
    )


def named_version(kind, name: str | None) -> str:
    """The version a command names (a full name, a unique prefix, `previous`), or LATEST's."""
    if name is not None:
        return kind.resolve(name)
    latest = kind.latest()
    if latest is None:
        raise UnknownVersionError(
            f"{kind.name} has no LATEST (nothing published yet); name a version (`ebr artifacts list {kind.name}`)"
        )
    return latest


def show(cfg: EbrConfig, args: Namespace) -> None:
    kind = ArtifactStore.from_config(cfg).kind(args.kind)
    print(kind.manifest(named_version(kind, args.version)).to_json().decode(), end="")


def history(cfg: EbrConfig, args: Namespace) -> None:
    moves = ArtifactStore.from_config(cfg).kind(args.kind).history()
    if args.json:
        for move in moves:
            print(move.to_json())
        return
    rows = [
        (short_time(m.at, args.wide), m.action, m.from_version or "-", m.to_version, m.reason, m.run_id or "", m.by)
        for m in moves
    ]
    if not rows:
        print(f"no pointer moves of {args.kind} yet")
        print_demo_root_hint(cfg)
        return
    print(table(["at (UTC)", "action", "from", "to", "reason", "run", "by"], rows, cut=(2, 3, 4, 5, 6), wide=args.wide))


def verify(cfg: EbrConfig, args: Namespace) -> None:
    kind = ArtifactStore.from_config(cfg).kind(args.kind)
    version = named_version(kind, args.version)
    manifest = kind.verify(version)
    print(
        f"{args.kind}/{version}: {len(manifest.files)} files, {human_bytes(manifest.total_bytes)}, all checksums match"
    )


def rollback(cfg: EbrConfig, args: Namespace) -> None:
    kind = ArtifactStore.from_config(cfg).kind(args.kind)
    result = kind.rollback_to(args.to, reason=args.reason, verify=not args.no_verify)
    print(result.detail)


def retain(cfg: EbrConfig, args: Namespace) -> None:
    from orchestration.retention import serving_pin

    keep = keep_count(args.keep, cfg)
    store = ArtifactStore.from_config(cfg)
    kind = store.kind(args.kind)
    pin = serving_pin(store, args.kind)
    report = kind.retain(keep, dry_run=args.dry_run, pinned=[pin] if pin else ())
    verb = "would delete" if report.dry_run else "deleted"
    print(
        f"{args.kind}: kept {len(report.kept)} ({', '.join(report.kept) or 'none'}); "
        f"{verb} {len(report.deleted)} ({', '.join(report.deleted) or 'none'})"
    )
    if report.stale_attempts:
        print(
            f"{verb} the staging of {len(report.stale_attempts)} abandoned write attempt(s): {', '.join(report.stale_attempts)}"
        )
    print_pin(pin, report.kept)


def print_pin(pin: str | None, kept) -> None:
    """Says why a version past `--keep` survived: a restarting service would serve it."""
    if pin and pin in kept:
        print(f"kept {pin} too: the consistent pair a restarting service serves while the LATESTs disagree by model")


def keep_count(keep: int | None, cfg: EbrConfig) -> int:
    """--keep N, or store.keep_versions; 0 and negative counts are refused, not replaced."""
    if keep is None:
        return cfg.store.keep_versions
    if keep < 1:
        raise SystemExit(
            f"error: --keep must be at least 1 (got {keep}); retention always keeps the newest version and LATEST's"
        )
    return keep
