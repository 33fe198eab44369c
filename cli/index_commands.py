"""`ebr index ...`: build, list, inspect, roll back and prune the HNSW index versions.

Each handler is a thin driver over `index_builder.publish`; hnswlib is imported only
when a build runs.
"""

from __future__ import annotations

from argparse import Namespace

from artifacts.kinds import COLLECTIONS, index_kind, snapshot_kind
from cli.arguments import VERSION_HELP, add_wide_flag
from cli.hints import print_demo_root_hint
from cli.output import human_bytes, short_time, table
from config import EbrConfig
from index_builder.errors import IndexRollbackRefusedError, IndexValidationError  # light: no hnswlib


def add_parser(commands) -> None:
    index = commands.add_parser(
        "index",
        help="build, list, inspect, roll back and prune HNSW index versions",
        description="Indexes live in indexes/<collection> (stories, creators, users), one version per "
        "embedding snapshot; LATEST names the one served.",
    )
    actions = index.add_subparsers(dest="action", required=True, metavar="ACTION")

    build_parser = actions.add_parser(
        "build",
        help="build, validate and publish the index of an embedding snapshot",
        description="Builds an hnswlib index (incrementally from the previous version when the model "
        "is unchanged), checks recall@10 against exact search and publishes it. Exit code 3 "
        "when validation refuses it (nothing is published).",
    )
    _collection(build_parser)
    build_parser.add_argument(
        "--snapshot",
        help="embedding snapshot version: its full name or a unique prefix "
        "(default: LATEST of embeddings/<collection>)",
    )
    build_parser.add_argument("--version", help="index version name (default: the snapshot's name)")
    build_parser.add_argument("--full", action="store_true", help="build from scratch, never incrementally")
    build_parser.add_argument("--run-id", help="the run this belongs to (a DAG run id), for the history")
    build_parser.add_argument("--no-publish", action="store_true", help="write the version but leave LATEST")
    build_parser.set_defaults(handler=build_index)

    list_parser = actions.add_parser("list", help="versions of a collection's index (* marks LATEST)")
    _collection(list_parser)
    add_wide_flag(list_parser)
    list_parser.set_defaults(handler=list_indexes)

    show_parser = actions.add_parser("show", help="print an index version's manifest")
    _collection(show_parser)
    show_parser.add_argument("version", nargs="?", help=f"{VERSION_HELP} (default: the one LATEST names)")
    show_parser.set_defaults(handler=show_index)

    rollback_parser = actions.add_parser(
        "rollback",
        help="move LATEST back to an earlier complete version",
        description="Refuses unknown or incomplete versions, versions whose checksums fail, and versions "
        "built from another model than the served user embeddings (unless --force).",
    )
    _collection(rollback_parser, required=True)
    rollback_parser.add_argument(
        "--to", required=True, metavar="VERSION", help=f"a complete version of this index: {VERSION_HELP}"
    )
    rollback_parser.add_argument("--reason", required=True, help="why, for HISTORY.jsonl")
    rollback_parser.add_argument(
        "--force", action="store_true", help="roll back even if its model differs from the user embeddings'"
    )
    rollback_parser.add_argument("--run-id", help="the run this belongs to, for the history")
    rollback_parser.set_defaults(handler=rollback_index)

    retain_parser = actions.add_parser("retain", help="delete all but the newest N versions (never LATEST's)")
    _collection(retain_parser)
    retain_parser.add_argument("--keep", type=int, metavar="N", help="default: store.keep_versions")
    retain_parser.add_argument("--dry-run", action="store_true", help="only say what would be deleted")
    retain_parser.set_defaults(handler=retain_indexes)


def _collection(parser, *, required: bool = False) -> None:
    parser.add_argument(
        "--collection",
        choices=COLLECTIONS,
        required=required,
        default=None if required else "stories",
        help="which index" + ("" if required else " (default: stories)"),
    )


def build_index(cfg: EbrConfig, args: Namespace) -> int:
    from artifacts import ArtifactStore
    from index_builder.publish import build_and_publish_index

    snapshot = args.snapshot and ArtifactStore.from_config(cfg).kind(snapshot_kind(args.collection)).resolve(
        args.snapshot
    )
    try:
        outcome = build_and_publish_index(
            cfg,
            args.collection,
            snapshot=snapshot,
            version=args.version,
            run_id=args.run_id,
            full=args.full,
            publish=not args.no_publish,
        )
    except IndexValidationError as err:
        print(f"refused: {err}")
        return 3
    metrics = outcome.manifest.metrics if outcome.manifest else {}
    print(f"indexes/{outcome.collection}/{outcome.version} ({outcome.mode})")
    rows = [
        (key, metrics[key])
        for key in (
            "recall_at_10",
            "validation_queries",
            "build_seconds",
            "vectors_per_second",
            "bytes_per_vector",
            "added",
            "deleted",
            "updated",
            "deleted_fraction",
        )
        if key in metrics
    ]
    if rows:
        print(table(["figure", "value"], rows))
    print(outcome.detail)
    return 0


def list_indexes(cfg: EbrConfig, args: Namespace) -> None:
    from index_builder.publish import describe_versions

    rows = [
        (
            ("* " if v["latest"] else "  ") + v["version"],
            "complete" if v["complete"] else "INCOMPLETE",
            v["mode"] or "",
            v["count"] if v["count"] is not None else "",
            v["recall_at_10"] or "",
            v["ef_search"] or "",
            v["model_version"] or "",
            human_bytes(v["bytes"]) if v["bytes"] else "",
            short_time(v["created_at"], args.wide),
        )
        for v in describe_versions(cfg, args.collection)
    ]
    if not rows:
        print(
            f"indexes/{args.collection} has no versions yet; build one with `ebr index build --collection {args.collection}`"
        )
        print_demo_root_hint(cfg)
        return
    headers = ["version (* = LATEST)", "state", "mode", "items", "recall@10", "ef", "model", "size", "created (UTC)"]
    print(table(headers, rows, cut=(0, 6), wide=args.wide))


def show_index(cfg: EbrConfig, args: Namespace) -> None:
    from artifacts import ArtifactStore
    from cli.artifact_commands import named_version

    kind = ArtifactStore.from_config(cfg).kind(index_kind(args.collection))
    print(kind.manifest(named_version(kind, args.version)).to_json().decode(), end="")


def rollback_index(cfg: EbrConfig, args: Namespace) -> None:
    from artifacts import ArtifactStore
    from index_builder import publish

    target = ArtifactStore.from_config(cfg).kind(index_kind(args.collection)).resolve(args.to)
    result = publish.rollback_index(
        cfg, args.collection, target, reason=args.reason, force=args.force, run_id=args.run_id
    )
    print(result.detail)


def retain_indexes(cfg: EbrConfig, args: Namespace) -> None:
    from artifacts import ArtifactStore
    from cli.artifact_commands import keep_count, print_pin
    from index_builder import publish
    from orchestration.retention import serving_pin

    keep = keep_count(args.keep, cfg)
    pin = serving_pin(ArtifactStore.from_config(cfg), index_kind(args.collection))
    report = publish.retain_indexes(cfg, args.collection, keep=keep, dry_run=args.dry_run, pinned=[pin] if pin else ())
    verb = "would delete" if report.dry_run else "deleted"
    print(
        f"{index_kind(args.collection)}: kept {len(report.kept)} ({', '.join(report.kept) or 'none'}); "
        f"{verb} {len(report.deleted)} ({', '.join(report.deleted) or 'none'})"
    )
    print_pin(pin, report.kept)


# Both derive from artifacts.ArtifactError (reported anyway); listed to say what to expect.
EXPECTED_ERRORS = (IndexValidationError, IndexRollbackRefusedError)
