"""`ebr`: the command line of the embedding-based retrieval pipeline.

Every command builds the configuration once (defaults, --config, EBR_* variables, --set
and --root), then calls one library function. Run `ebr COMMAND --help` for details.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from contextlib import nullcontext

from cli.arguments import VERSION_HELP, add_wide_flag
from config import ConfigError, load_config

# Stage commands that live in their own module: each has `add_parser(commands)`, which
# registers its sub-commands with `set_defaults(handler=...)`, and may list the
# exception types it reports as one `error:` line in `EXPECTED_ERRORS`. Modules must
# import nothing heavy at module level (TensorFlow, Beam, hnswlib load inside handlers).
STAGE_COMMAND_MODULES = (
    "cli.embed_commands",
    "cli.index_commands",
    "cli.serve_commands",
    "cli.route_commands",
    "cli.report_commands",
)
# Commands that load TensorFlow, whose C++ start-up lines are filtered out of stderr unless -v.
TENSORFLOW_COMMANDS = ("train", "embed")

EPILOG = """\
examples:
  ebr data generate --size tiny                 a small synthetic world under the default root
  ebr data convert movielens --source ../shared/data/ml-100k
  ebr data show
  ebr train                                     train, evaluate against baselines, gate, publish
  ebr artifacts list                            every kind with its LATEST version
  ebr artifacts list indexes/stories            versions of one kind (* marks LATEST)
  ebr artifacts rollback indexes/stories --to previous --reason "bad recall"
  ebr index show --collection stories 20261123T18   a version by a unique prefix of its name
  ebr --root gs://my-bucket/ebr artifacts list  the same against Google Cloud Storage
  ebr --root file://$PWD/var/demo artifacts list  what `make demo` wrote (`make shell` sets EBR_ROOT to it)

configuration: config/defaults.toml, overridden by --config FILE, EBR_<SECTION>__<KEY>
variables (EBR_ROOT for the root), then --set section.key=value. `ebr config show` prints
the result.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ebr",
        description="Embedding-based retrieval for short videos: data, artifacts and pipeline stages.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", metavar="FILE", help="TOML file layered over the defaults")
    parser.add_argument("--root", metavar="URI", help="artifact root: file:///abs/path or gs://bucket/prefix")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one setting, e.g. --set store.keep_versions=3 (repeatable)",
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="log what the library does, and let TensorFlow's and CUDA's start-up lines through",
    )
    parser.add_argument("--wide", action="store_true", help="tables at full width (default: cut to 120 columns)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    config = commands.add_parser("config", help="show the effective configuration")
    config_commands = config.add_subparsers(dest="action", required=True, metavar="ACTION")
    config_commands.add_parser("show", help="print the configuration after every override, as JSON")

    _add_data_commands(commands)
    _add_artifact_commands(commands)
    _add_train_command(commands)
    for module in _stage_modules():
        module.add_parser(commands)
    return parser


def _stage_modules():
    import importlib

    return [importlib.import_module(name) for name in STAGE_COMMAND_MODULES]


def _add_train_command(commands) -> None:
    train = commands.add_parser(
        "train",
        help="train the two-tower model, evaluate it against baselines, gate and publish it",
        description="Trains on ROOT/warehouse, evaluates the model, popularity and implicit ALS "
        "on the same split, exports both towers and publishes them as a version of "
        "models/two_tower if the promotion gate passes (exit code 3 if it refuses).",
    )
    train.add_argument("--version", help="version name (default: <UTC time>-train-<run id>)")
    train.add_argument("--run-id", help="the run this belongs to (a DAG run id), for names and history")
    train.add_argument("--workdir", help="local folder for logs, TensorBoard and the export")
    train.add_argument("--no-publish", action="store_true", help="train, evaluate and export only")
    train.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="train with N worker processes on this machine (default train.workers; see README, 'Running at scale')",
    )
    add_wide_flag(train)


def _add_data_commands(commands) -> None:
    data = commands.add_parser("data", help="write or inspect the warehouse tables")
    actions = data.add_subparsers(dest="action", required=True, metavar="ACTION")

    generate = actions.add_parser(
        "generate",
        help="generate a synthetic Spotlight world",
        description="Writes users, creators, stories, daily event partitions and the ground "
        "truth of a deterministic synthetic world into ROOT/warehouse.",
    )
    generate.add_argument(
        "--size",
        choices=["tiny", "small", "medium", "large"],
        help="preset: tiny (tests), small (default), medium, large (10M events)",
    )
    generate.add_argument("--seed", type=int, help="random seed (same seed, same world)")
    for name, what in (
        ("users", "users"),
        ("creators", "creators"),
        ("stories", "stories"),
        ("events", "impressions"),
        ("days", "days of events"),
    ):
        generate.add_argument(f"--{name}", type=int, metavar="N", help=f"number of {what} (overrides the preset)")
    generate.add_argument("--overwrite", action="store_true", help="replace an existing warehouse")
    generate.add_argument("--no-progress", action="store_true", help="no progress bar")

    convert = actions.add_parser("convert", help="convert a real data set into the warehouse tables")
    datasets = convert.add_subparsers(dest="dataset", required=True, metavar="DATASET")
    movielens = datasets.add_parser("movielens", help="MovieLens 100K (u.data, ...) or 1M (ratings.dat, ...)")
    kuairand = datasets.add_parser("kuairand", help="KuaiRand logs (log_standard_*.csv, user_features_*.csv)")
    for sub in (movielens, kuairand):
        sub.add_argument("--source", required=True, metavar="DIR", help="folder with the original files")
        sub.add_argument("--overwrite", action="store_true", help="replace an existing warehouse")
    kuairand.add_argument("--include-random", action="store_true", help="also read log_random_*.csv")

    show = actions.add_parser("show", help="row counts, days and source of the warehouse")
    show.add_argument("--json", action="store_true", help="machine-readable output")
    add_wide_flag(show)


def _add_artifact_commands(commands) -> None:
    artifacts = commands.add_parser(
        "artifacts",
        help="list, inspect, verify, roll back and prune versioned artifacts",
        description="Kinds are models/two_tower, embeddings/{users,stories,creators} and "
        "indexes/{stories,creators,users}.",
    )
    actions = artifacts.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="every kind, or the versions of one kind")
    listing.add_argument("kind", nargs="?", help="e.g. indexes/stories")
    add_wide_flag(listing)
    show = actions.add_parser("show", help="print a version's manifest")
    show.add_argument("kind")
    show.add_argument("version", nargs="?", help=f"{VERSION_HELP} (default: the one LATEST names)")
    history = actions.add_parser("history", help="every move of LATEST: when, from, to, why, by whom")
    history.add_argument("kind")
    history.add_argument("--json", action="store_true", help="one JSON object per line")
    add_wide_flag(history)
    verify = actions.add_parser("verify", help="re-read every file and check sizes and sha256")
    verify.add_argument("kind")
    verify.add_argument("version", nargs="?", help=f"{VERSION_HELP} (default: the one LATEST names)")
    rollback = actions.add_parser("rollback", help="move LATEST back to an earlier complete version")
    rollback.add_argument("kind")
    rollback.add_argument(
        "--to", required=True, metavar="VERSION", help=f"a complete version of this kind: {VERSION_HELP}"
    )
    rollback.add_argument("--reason", required=True, help="why, for HISTORY.jsonl")
    rollback.add_argument("--no-verify", action="store_true", help="skip re-checking the target's checksums")
    retain = actions.add_parser("retain", help="delete all but the newest N versions (never LATEST's)")
    retain.add_argument("kind")
    retain.add_argument("--keep", type=int, metavar="N", help="default: store.keep_versions")
    retain.add_argument("--dry-run", action="store_true", help="only say what would be deleted")


def _overrides(args: argparse.Namespace) -> list[str]:
    overrides = list(args.overrides)
    if args.root:
        overrides.append(f"root={args.root}")
    if args.command == "data" and args.action == "generate":
        for flag, key in (
            ("size", "size"),
            ("seed", "seed"),
            ("users", "n_users"),
            ("creators", "n_creators"),
            ("stories", "n_stories"),
            ("events", "n_events"),
            ("days", "days"),
        ):
            value = getattr(args, flag)
            if value is not None:
                overrides.append(f"world.{key}={value}")
    return overrides


def main(argv: Sequence[str] | None = None) -> int:
    # TFRS 0.7.7 needs Keras 2 (tf-keras), chosen by this variable when TensorFlow is
    # first imported. No module of the CLI imports TensorFlow at import time (handlers
    # do), so setting it here, first, makes `ebr train` work outside `make` too.
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    if not args.verbose:
        from cli.quiet import quiet_python_noise

        quiet_python_noise()
    with _native_noise_filter(args):
        return _run(args)


def _native_noise_filter(args: argparse.Namespace):
    if args.verbose or args.command not in TENSORFLOW_COMMANDS:
        return nullcontext()
    from cli.quiet import native_noise_filtered

    return native_noise_filtered()


def _run(args: argparse.Namespace) -> int:
    cfg = None
    try:
        cfg = load_config(args.config, _overrides(args))
        return _dispatch(cfg, args) or 0
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except OSError as err:  # the file system refused (permissions, a symlink loop, a full disk); no warehouse
        where = f": {err.filename}" if getattr(err, "filename", None) else ""
        return _failed(cfg, f"{err.strerror or err}{where}")
    except Exception as err:  # expected failures carry actionable messages
        if not _is_expected(err):
            raise
        return _failed(cfg, str(err))


def _failed(cfg, message: str) -> int:
    """One `error:` line (and where the demo's artifacts are, if the root is empty)."""
    print(f"error: {message}", file=sys.stderr)
    if cfg is not None:
        from cli.hints import print_demo_root_hint

        print_demo_root_hint(cfg)
    return 1


def _dispatch(cfg, args) -> int | None:
    from cli import artifact_commands, data_commands, train_commands

    if args.command == "config":
        print(cfg.model_dump_json(indent=2))
        return None
    handlers = {
        ("data", "generate"): data_commands.generate,
        ("data", "convert"): data_commands.convert,
        ("data", "show"): data_commands.show,
        ("artifacts", "list"): artifact_commands.list_versions,
        ("artifacts", "show"): artifact_commands.show,
        ("artifacts", "history"): artifact_commands.history,
        ("artifacts", "verify"): artifact_commands.verify,
        ("artifacts", "rollback"): artifact_commands.rollback,
        ("artifacts", "retain"): artifact_commands.retain,
    }
    if args.command == "train":
        return train_commands.train(cfg, args)
    if getattr(args, "handler", None) is not None:
        return args.handler(cfg, args)
    return handlers[(args.command, args.action)](cfg, args)


def _is_expected(err: Exception) -> bool:
    from artifacts import ArtifactError
    from warehouse import WarehouseMissingError, WarehouseSchemaError
    from warehouse.source_files import SourceFileError

    stage_errors = tuple(e for m in _stage_modules() for e in getattr(m, "EXPECTED_ERRORS", ()))
    return isinstance(err, (ArtifactError, WarehouseMissingError, WarehouseSchemaError, SourceFileError, *stage_errors))


if __name__ == "__main__":
    sys.exit(main())
