"""`ebr train`: train, evaluate against the baselines, gate, publish."""

from __future__ import annotations

from argparse import Namespace
from pathlib import Path

from artifacts import version_name
from cli.output import table
from config import ConfigError, EbrConfig
from config.settings import REPO_DIR

SHOWN = (
    "recall@10",
    "recall@100",
    "recall@500",
    "top_k_accuracy@100",
    "ndcg@10",
    "coverage@100",
    "language_match@10",
    "country_match@10",
    "oracle_recall@100",
    "cold_recall@100",
    "catalogue_recall@100",
)
SIZES = ("eval_users", "eval_positives", "cold_eval_users", "cold_eval_positives")


def metric_cell(metrics: dict[str, float], name: str, wide: bool = True) -> str:
    """ "0.1234 [0.1180, 0.1290]" with the bootstrap interval when there is one; not `wide`,
    "0.123 [.118,.129]", so the model and five baselines fit in 120 columns."""
    if name not in metrics:
        return "-"
    if not wide:
        short = f"{metrics[name]:.3f}"
        if f"{name}_lo" in metrics:
            lo, hi = (f"{metrics[f'{name}_{end}']:.3f}".removeprefix("0") for end in ("lo", "hi"))
            short += f" [{lo},{hi}]"
        return short
    if f"{name}_lo" in metrics:
        return f"{metrics[name]:.4f} [{metrics[f'{name}_lo']:.4f}, {metrics[f'{name}_hi']:.4f}]"
    return f"{metrics[name]:.4f}"


def train(cfg: EbrConfig, args: Namespace) -> int:
    from models.distributed import check_workers, run_workers, train_command, worker_role

    workers = args.workers if args.workers is not None else cfg.train.workers
    if workers < 1:
        raise ConfigError(f"--workers must be at least 1, not {workers}")
    try:
        check_workers(cfg, workers)
    except ValueError as err:
        raise ConfigError(str(err)) from err
    version = args.version or version_name(f"train-{args.run_id or 'manual'}")
    workdir = Path(args.workdir) if args.workdir else REPO_DIR / "var" / "work" / "train" / version
    role = worker_role()
    if workers > 1 and role is None:  # the launcher: the same command once per worker
        print(f"training model version {version} with {workers} workers (workdir {workdir}; workers 1.. log there)")
        command = train_command(
            cfg,
            version,
            workdir,
            workers,
            run_id=args.run_id,
            publish=not args.no_publish,
            verbose=args.verbose,
            wide=args.wide,
        )
        return run_workers(command, workers, workdir)
    if role is not None and role[1] != workers:
        raise ConfigError(f"TF_CONFIG names {role[1]} workers but this run has {workers} (--workers / train.workers)")
    return _train_here(cfg, args, version, workdir, role)


def _train_here(cfg: EbrConfig, args: Namespace, version: str, workdir: Path, role: tuple[int, int] | None) -> int:
    from models.distributed import strategy_from_environment

    strategy = strategy_from_environment()  # first: before this process runs any TensorFlow op
    from models.pipeline import train_and_publish

    if role is None:
        print(f"training model version {version} (workdir {workdir})")
    outcome = train_and_publish(
        cfg,
        workdir,
        version,
        run_id=args.run_id,
        publish=not args.no_publish,
        verbose=1 if role is None or role[0] == 0 else 0,
        strategy=strategy,
    )
    if role is not None and role[0] > 0:
        trained = (
            f"trained {len(outcome.result.history)} epochs, best {outcome.result.best_epoch}"
            if outcome.result
            else "nothing to train"
        )
        print(f"worker {role[0]} of {role[1]}: {trained}; the chief (worker 0) evaluates and publishes")
        return 0
    if outcome.reused:
        print(f"{version} was trained already: {outcome.published.detail if outcome.published else 'not published'}")
        return 0
    metrics = outcome.result.metrics
    names = [n for n in SHOWN if n in metrics["model"]]
    model = metrics["model"]
    print()
    print(
        "test set: "
        + ", ".join(f"{int(model[n]):,} {n.replace('_', ' ')}" for n in SIZES if n in model)
        + f" over {outcome.result.split.get('candidates', {}).get('eligible', 0):,} eligible candidates (95% bootstrap intervals over users)"
    )
    rows = [(n, *(metric_cell(m, n, args.wide) for m in metrics.values())) for n in names]
    print(table(["metric", *metrics], rows, wide=args.wide))
    print(f"\nbest epoch {outcome.result.best_epoch}, {outcome.result.examples_per_second:,.0f} training examples/s")
    print(f"gate: {'promote' if outcome.gate.promote else 'REFUSE'}: {'; '.join(outcome.gate.reasons)}")
    if outcome.published is not None:
        print(outcome.published.detail)
    elif not args.no_publish:
        print("not published")
        return 3
    return 0
