"""Model quality, side by side in one run: the two-tower model against popularity and
implicit ALS on the same split, on MovieLens 100K and on a synthetic world.

    python benchmarks/model_quality.py [--movielens DIR] [--world-size small] [--out FILE]

MovieLens 100K (TFRS basic-retrieval protocol, config/presets/movielens_tfrs.toml):
the seed's sigmoid-BCE loss and the softmax loss, each trained and early-stopped on a
validation split; the baselines are computed once on the same split.
Synthetic world (time split, last 3 days held out): in-batch negatives (the seed's
choice) against a model trained without them (pointwise on impressions), with the
country/language match of the top 10 and recall against the oracle.

The MovieLens files are converted into a temporary directory, never into the project.
Prints a Markdown table and writes JSON (default benchmarks/results/model_quality.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MOVIELENS = REPO.parent / "shared" / "data" / "ml-100k"
COLUMNS = ("top_k_accuracy@100", "recall@10", "recall@100", "ndcg@10", "coverage@100", "language_match@10", "country_match@10", "oracle_recall@100")


def run(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--movielens", type=Path, default=DEFAULT_MOVIELENS, help="MovieLens 100K folder (skipped if absent)")
    parser.add_argument("--world-size", default="small", choices=["tiny", "small", "medium", "large"])
    parser.add_argument("--epochs", type=int, default=20, help="upper bound; early stopping picks the epoch")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "model_quality.json")
    args = parser.parse_args(argv)

    from config import load_config
    from warehouse import Warehouse
    from warehouse.movielens import convert_movielens
    from warehouse.synthetic import generate_world

    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="ebr-bench-") as tmp:
        if (args.movielens / "u.data").is_file():
            root = f"file://{tmp}/movielens"
            warehouse = Warehouse.open(root)
            convert_movielens(args.movielens, warehouse)
            for i, loss in enumerate(("softmax", "sigmoid")):
                cfg = load_config(REPO / "config/presets/movielens_tfrs.toml", [f"root={root}", f"model.loss={loss}", f"train.epochs={args.epochs}"], environ={})
                rows += _measure("movielens-100k (TFRS protocol, random 80/20)", f"two-tower, {loss} loss", cfg, warehouse, Path(tmp) / f"ml-{loss}", baselines=i == 0)
        else:
            print(f"MovieLens 100K not found at {args.movielens}: skipped", file=sys.stderr)

        root = f"file://{tmp}/world"
        base = [f"root={root}", f"world.size={args.world_size}", f"train.epochs={args.epochs}"]
        world_cfg = load_config(overrides=base, environ={})
        warehouse = Warehouse.open(root)
        generate_world(world_cfg.world, warehouse, progress=False)
        for i, negatives in enumerate(("in_batch", "impressions")):
            cfg = load_config(overrides=[*base, f"model.negatives={negatives}"], environ={})
            label = f"two-tower, {negatives.replace('_', '-')} negatives"
            rows += _measure(f"synthetic-{args.world_size} (time split, last 3 days)", label, cfg, warehouse, Path(tmp) / f"world-{negatives}", baselines=i == 0)

    report = {
        "benchmark": "model_quality",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "command": "python benchmarks/model_quality.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(markdown(rows))
    print(f"\nwritten to {args.out}")
    return report


def _measure(dataset: str, label: str, cfg, warehouse, workdir: Path, baselines: bool) -> list[dict]:
    from models.training import train_and_evaluate

    started = time.perf_counter()
    result = train_and_evaluate(cfg, workdir, warehouse, baselines=baselines, verbose=0)
    seconds = time.perf_counter() - started
    rows = [{
        "dataset": dataset, "scorer": label, "metrics": result.metrics["model"],
        "best_epoch": result.best_epoch, "epochs_run": len(result.history),
        "examples_per_second": round(result.examples_per_second, 1), "seconds": round(seconds, 1),
        "validation": result.history,
    }]  # fmt: skip
    for name in ("popularity", "als"):
        if name in result.metrics:
            rows.append({"dataset": dataset, "scorer": {"als": "implicit ALS (32 factors)"}.get(name, name), "metrics": result.metrics[name]})
    return rows


def markdown(rows: list[dict]) -> str:
    shown = [c for c in COLUMNS if any(c in r["metrics"] for r in rows)]
    lines = ["| dataset | scorer | " + " | ".join(shown) + " | best epoch | train ex/s |", "|---" * (len(shown) + 4) + "|"]
    for r in rows:
        cells = [f"{r['metrics'][c]:.3f}" if c in r["metrics"] else "" for c in shown]
        lines.append(f"| {r['dataset']} | {r['scorer']} | " + " | ".join(cells) + f" | {r.get('best_epoch', '')} | {r.get('examples_per_second', '')} |")
    return "\n".join(lines)


if __name__ == "__main__":
    run()
