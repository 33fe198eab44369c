"""`ebr train`: train, evaluate against the baselines, gate, publish."""

from __future__ import annotations

from argparse import Namespace
from pathlib import Path

from artifacts import version_name
from cli.output import table
from config import EbrConfig
from config.settings import REPO_DIR

SHOWN = ("recall@10", "recall@100", "recall@500", "top_k_accuracy@100", "ndcg@10", "coverage@100", "language_match@10", "country_match@10", "oracle_recall@100")


def train(cfg: EbrConfig, args: Namespace) -> int:
    from models.pipeline import train_and_publish

    version = args.version or version_name(f"train-{args.run_id or 'manual'}")
    workdir = Path(args.workdir) if args.workdir else REPO_DIR / "var" / "work" / "train" / version
    print(f"training model version {version} (workdir {workdir})")
    outcome = train_and_publish(cfg, workdir, version, run_id=args.run_id, publish=not args.no_publish, verbose=1)
    if outcome.reused:
        print(f"{version} was trained already: {outcome.published.detail if outcome.published else 'not published'}")
        return 0
    metrics = outcome.result.metrics
    names = [n for n in SHOWN if n in metrics["model"]]
    print()
    print(table(["metric", *metrics], [(n, *(f"{m[n]:.4f}" for m in metrics.values())) for n in names]))
    print(f"\nbest epoch {outcome.result.best_epoch}, {outcome.result.examples_per_second:,.0f} training examples/s")
    print(f"gate: {'promote' if outcome.gate.promote else 'REFUSE'}: {'; '.join(outcome.gate.reasons)}")
    if outcome.published is not None:
        print(outcome.published.detail)
    elif not args.no_publish:
        print("not published")
        return 3
    return 0
