"""`ebr embed users|stories`: run an embedding dataflow and print its counters.

The command builds the Beam job's own argv from the configuration and the flags, then
calls the job's `run(argv)`: exactly what a Dataflow launch or the Airflow operator
does, so the CLI is one more launcher of the same pipeline.
"""

from __future__ import annotations

import argparse
import time
from argparse import Namespace

from beam_jobs.errors import EmbeddingJobError
from cli.arguments import add_wide_flag
from cli.output import table
from config import EbrConfig


def add_parser(commands) -> None:
    embed = commands.add_parser(
        "embed",
        help="run the user or story embedding dataflow (Apache Beam)",
        description="Reads the warehouse, builds tower features with the training code, runs "
        "the tower of a published model, writes an embedding snapshot and publishes "
        "it. The runner is configuration (embed.runner, embed.pipeline_options) or "
        "flags after `--`, e.g. `-- --runner=DataflowRunner --project=p ...`.",
    )
    entities = embed.add_subparsers(dest="action", required=True, metavar="ENTITY")
    for name, what in (("users", "every user with its history"), ("stories", "eligible stories, and creators")):
        sub = entities.add_parser(name, help=f"embed {what}")
        sub.add_argument(
            "--model-version",
            help="a model version: its full name, a unique prefix or `previous` (default: the model LATEST names)",
        )
        sub.add_argument(
            "--as-of",
            help="UTC time the features are computed as of (ISO 8601 or epoch seconds; "
            "default: the end of the newest event partition)",
        )
        sub.add_argument("--snapshot", help="snapshot version name (default: derived from as-of, model and run id)")
        sub.add_argument("--run-id", help="the run this belongs to (a DAG run id), for names and history")
        sub.add_argument("--runner", help="Beam runner (default: embed.runner)")
        sub.add_argument("--workers", type=int, help="DirectRunner: run in multi-process mode with N workers")
        sub.add_argument("--no-publish", action="store_true", help="write the snapshot but leave LATEST")
        add_wide_flag(sub)
        sub.add_argument("beam_args", nargs=argparse.REMAINDER, help="further Beam pipeline options, after --")
        sub.set_defaults(handler=embed_entities)


def job_argv(cfg: EbrConfig, args: Namespace) -> list[str]:
    """The Beam job's argv: the same configuration layers (--config, --set, --root), then flags."""
    # embed.runner and embed.pipeline_options are the job's own defaults (it reads the config).
    argv = [f"--root={cfg.root}", *([f"--runner={args.runner}"] if args.runner else [])]
    argv += [f"--set={key}" for key in getattr(args, "overrides", [])]
    if getattr(args, "config", None):
        argv.append(f"--ebr_config={args.config}")
    for flag, value in (
        ("model_version", args.model_version),
        ("as_of", args.as_of),
        ("snapshot", args.snapshot),
        ("run_id", args.run_id),
    ):
        if value:
            argv.append(f"--{flag}={value}")
    if args.workers:
        argv += ["--direct_running_mode=multi_processing", f"--direct_num_workers={args.workers}"]
    if args.no_publish:
        argv.append("--no_publish")
    return argv + [a for a in args.beam_args if a != "--"]


def embed_entities(cfg: EbrConfig, args: Namespace) -> int:
    if args.action == "users":
        from beam_jobs import user_embeddings as job
    else:
        from beam_jobs import story_embeddings as job

    if args.model_version:
        from artifacts import MODELS, ArtifactStore

        args.model_version = ArtifactStore.from_config(cfg).kind(MODELS).resolve(args.model_version)
    started = time.perf_counter()
    print(f"embedding {args.action} with {args.runner or cfg.embed.runner} ...", flush=True)
    outcomes = job.run(job_argv(cfg, args))
    elapsed = time.perf_counter() - started
    first = outcomes[0]
    print(f"\nmodel {first.model_version}, as of {first.as_of_iso}")
    if first.reused:
        print("the snapshot was complete already (a rerun): nothing embedded again")
    else:
        print(table(["counter", "value"], list(first.counters.items())))
    print()
    rows = [(f"{o.kind}/{o.snapshot}", f"{o.count:,}", o.published_detail) for o in outcomes]
    print(table(["snapshot", "embeddings", "LATEST"], rows, cut=(0, 2), wide=args.wide))
    print(f"\n{elapsed:.1f} s wall")
    return 0


EXPECTED_ERRORS = (EmbeddingJobError,)
