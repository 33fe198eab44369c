"""Model quality, side by side in one run: the two-tower model against strong baselines
(popularity, recent popularity, implicit ALS, EASE or item-kNN, each tuned on a validation
split) on the same split, the same candidates and the same evaluation code.

    python benchmarks/model_quality.py [--datasets ml-100k,ml-100k-tfrs,ml-1m,synthetic]
        [--seeds 3] [--epochs 20] [--ml1m-users 2000 | --ml1m-users 0 (all 6,040)]
        [--variants label,pointwise,transformer,mixed,... | all | none] [--world-size small] [--out FILE]

Datasets (MovieLens is read from ../shared/data, converted into a temporary folder, never
into the project; a missing one is skipped and says so):
- ml-100k, ml-1m: the project's time split (config/presets/movielens.toml: a test window
  at the end of the log grown until it holds train.min_test_users users and
  train.min_test_positives positives; every rating is a positive). `--ml1m-users N` keeps
  a random N users (seeded) so that the run fits `make bench`; 0 keeps all of them.
- ml-100k-tfrs: the TFRS basic-retrieval protocol (config/presets/movielens_tfrs.toml,
  random 80/20 split, top-100 accuracy over all movies).
- synthetic: the synthetic Spotlight world, time split, candidates = the stories the
  index would hold (embed.story_max_age_days), cold-start recall on stories first seen
  after the cutoff, and the model without in-batch negatives (pointwise on impressions)
  for the language-match comparison.

For every dataset the default model is trained with `--seeds` seeds (baselines are fitted
once, with the first); its row gives the median over seeds with the range. Then the model
options named by `--variants` (the Transformer sequence encoder, mixed negatives, logQ
strength, temperature, id dropout, the rating >= 4 label on MovieLens, pointwise
negatives on the synthetic world) are trained once each, with the first seed and the same
epoch cap, on the same split. Every figure has its 95% bootstrap interval over users and
the test-set size. The verdict against the best baseline per metric: "win" when the first
seed's paired-bootstrap interval (over the same users) is above zero and every seed beats
the baseline's figure, "loss" in the mirror case, "tie" otherwise.

Prints Markdown tables and writes JSON (default benchmarks/results/model_quality.json).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
DATASETS = ("ml-100k", "ml-100k-tfrs", "ml-1m", "synthetic")
COMPARED = ("recall@10", "recall@100", "recall@500", "ndcg@10")
COLUMNS = (
    "recall@10",
    "recall@100",
    "recall@500",
    "ndcg@10",
    "top_k_accuracy@100",
    "cold_recall@100",
    "catalogue_recall@100",
    "language_match@10",
    "oracle_recall@100",
)
BASELINE_NAMES = {
    "popularity": "popularity (all time)",
    "recent_popularity": "recent popularity",
    "als": "implicit ALS",
    "ease": "EASE",
    "item_knn": "item-kNN",
}
DEFAULT = "two-tower (default)"

# Model options measured on/off against the default, one seed each, on the same split:
# name -> (what the row says, config overrides, the datasets it applies to or None for all).
VARIANTS: dict[str, tuple[str, tuple[str, ...], tuple[str, ...] | None]] = {
    "transformer": ("transformer sequence encoder", ("model.sequence_encoder=transformer",), None),
    "mixed": ("mixed negatives (+512 uniform corpus negatives)", ("model.corpus_negatives=512",), None),
    "logq0": ("logQ strength 0 (off)", ("model.logq_strength=0.0",), None),
    "logq05": ("logQ strength 0.5", ("model.logq_strength=0.5",), None),
    "temp005": ("temperature 0.05", ("model.temperature=0.05",), None),
    "temp02": ("temperature 0.2", ("model.temperature=0.2",), None),
    "no-id-dropout": ("no id dropout", ("model.id_dropout=0.0",), None),
    "no-prior": ("without the popularity prior dimension", ("model.popularity_prior=false",), None),
    "prior": ("with the popularity prior dimension", ("model.popularity_prior=true",), None),
    # The MovieLens preset chooses the epoch on the training log's last days; this is the
    # alternative (random held-out positives, top-100 accuracy).
    "random-validation": (
        "epoch chosen on random held-out positives",
        ("train.validation=random",),
        ("ml-100k", "ml-1m"),
    ),
    # Its own test set (rating >= 4 positives) and its own baselines beside it.
    # --set merges into the preset's {view = 1}: view is zeroed explicitly.
    "label": (
        "rating >= 4 is the positive",
        ('features.label_weights={"view": 0.0, "long_view": 1.0}',),
        ("ml-100k", "ml-1m"),
    ),
    # Graded confidence (Hu et al. 2008): every rating is a positive, rating >= 4 counts twice.
    # The same test positives as the default.
    "graded": (
        "graded label (every rating; rating >= 4 weighs 2)",
        ('features.label_weights={"view": 1.0, "long_view": 1.0}',),
        ("ml-100k", "ml-1m"),
    ),
    "pointwise": (
        "without in-batch negatives (pointwise on impressions)",
        ("model.negatives=impressions",),
        ("synthetic",),
    ),
}
DEFAULT_VARIANTS = "label,pointwise"


def run(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", default=",".join(DATASETS), help=f"comma-separated, of {', '.join(DATASETS)}")
    parser.add_argument("--data-dir", type=Path, default=SHARED_DATA, help="holds ml-100k/ and ml-1m/")
    parser.add_argument("--movielens", type=Path, help="MovieLens 100K folder (default DATA_DIR/ml-100k)")
    parser.add_argument("--world-size", default="small", choices=["tiny", "small", "medium", "large"])
    parser.add_argument("--epochs", type=int, default=20, help="upper bound; early stopping picks the epoch")
    parser.add_argument(
        "--seeds", type=int, default=3, help="seeds of the default model (medians and ranges over them)"
    )
    parser.add_argument("--ml1m-users", type=int, default=2000, help="users kept from MovieLens 1M (0: all 6,040)")
    parser.add_argument(
        "--variants",
        default=DEFAULT_VARIANTS,
        help=f"model options trained beside the default, comma-separated, of {', '.join(VARIANTS)}; or 'all', 'none'",
    )
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "model_quality.json")
    args = parser.parse_args(argv)
    datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    unknown = sorted(set(datasets) - set(DATASETS))
    if unknown:
        parser.error(f"unknown dataset(s) {', '.join(unknown)}: choose from {', '.join(DATASETS)}")
    if args.seeds < 1:
        parser.error("--seeds must be at least 1")
    logging.basicConfig(level=logging.WARNING)
    chosen = (
        list(VARIANTS)
        if args.variants == "all"
        else []
        if args.variants == "none"
        else [v.strip() for v in args.variants.split(",") if v.strip()]
    )
    if set(chosen) - set(VARIANTS):
        parser.error(
            f"unknown variant(s) {', '.join(sorted(set(chosen) - set(VARIANTS)))}: choose from {', '.join(VARIANTS)}"
        )
    sources = {"ml-100k": args.movielens or args.data_dir / "ml-100k", "ml-1m": args.data_dir / "ml-1m"}

    rows: list[dict] = []
    skipped: list[str] = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ebr-bench-") as tmp:
        for dataset in datasets:
            prepared = _prepare(dataset, Path(tmp), sources, args)
            if prepared is None:
                skipped.append(dataset)
                continue
            label, base, warehouse = prepared
            variants = {
                VARIANTS[v][0]: VARIANTS[v][1] for v in chosen if VARIANTS[v][2] is None or dataset in VARIANTS[v][2]
            }
            rows += _dataset_rows(label, base, warehouse, Path(tmp) / dataset, args, variants)
            _write(args.out, _report(argv, args, rows, skipped, started, partial=True))

    report = _report(argv, args, rows, skipped, started)
    _write(args.out, report)
    print(markdown(rows))
    for dataset in skipped:
        print(f"\n{dataset}: skipped (data not found)")
    print(f"\nwritten to {args.out}")
    return report


def _report(argv, args, rows: list[dict], skipped: list[str], started: float, partial: bool = False) -> dict:
    return {
        "benchmark": "model_quality",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "command": "python benchmarks/model_quality.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "seconds": round(time.perf_counter() - started, 1),
        "seeds": args.seeds,
        "skipped": skipped,
        "partial": partial,  # True while the run is still going (written after each dataset)
        "rows": rows,
    }


def _write(path: Path, report: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, default=float))


def _prepare(dataset: str, tmp: Path, sources: dict[str, Path], args):
    """(dataset label, config overrides, warehouse) or None."""
    from config import load_config
    from warehouse import Warehouse

    root = f"file://{tmp}/{dataset}-root"
    epochs = f"train.epochs={args.epochs}"
    if dataset.startswith("ml-"):
        from warehouse.movielens import convert_movielens

        source = sources["ml-1m" if dataset == "ml-1m" else "ml-100k"]
        if not source.is_dir():
            print(f"{dataset}: {source} not found: skipped", file=sys.stderr)
            return None
        warehouse = Warehouse.open(root)
        convert_movielens(source, warehouse)
        users = ""
        if dataset == "ml-1m" and args.ml1m_users:
            sample = Warehouse.open(f"{root}-sample")
            users = f", {_subsample_users(warehouse, sample, args.ml1m_users):,} random users"
            warehouse = sample
        if dataset == "ml-100k-tfrs":
            base = ["config/presets/movielens_tfrs.toml", f"root={root}", epochs]
            return "ml-100k (TFRS protocol: random 80/20)", base, warehouse
        base = ["config/presets/movielens.toml", f"root={root}", epochs]
        if users:
            # A random sixth of ML-1M's users leaves ~120 in the last half of its 970 days,
            # short of the preset's 200: the sample is held to train.*'s defaults instead.
            base += ["train.min_test_users=100", "train.min_test_positives=1000"]
        return f"{dataset} (time split{users})", base, warehouse
    from warehouse.synthetic import generate_world

    base = [None, f"root={root}", f"world.size={args.world_size}", epochs]
    cfg = load_config(overrides=base[1:], environ={})
    warehouse = Warehouse.open(root)
    generate_world(cfg.world, warehouse, progress=False)
    return f"synthetic-{args.world_size} (time split)", base, warehouse


def _subsample_users(source, target, n: int, seed: int = 0) -> int:
    """Writes `source`'s warehouse into `target` with `n` random users and their events."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    users = source.read_table("users")
    keep = np.sort(
        np.random.default_rng(seed).choice(
            users["user_id"].to_numpy(zero_copy_only=False), min(n, len(users)), replace=False
        )
    )
    for table in ("stories", "creators"):
        target.write_table(table, source.read_table(table))
    kept = pa.array(keep)  # pyarrow's is_in takes an Array, not a numpy array of strings
    target.write_table("users", users.filter(pc.is_in(users["user_id"], value_set=kept)))
    events = source.read_events()
    target.write_events(events.filter(pc.is_in(events["user_id"], value_set=kept)))
    return len(keep)


def _config(base: list, overrides: tuple[str, ...] = ()):
    from config import load_config

    preset, rest = base[0], base[1:]
    return load_config(REPO / preset if preset else None, [*rest, *overrides], environ={})


def _dataset_rows(
    label: str, base: list, warehouse, workdir: Path, args, variants: dict[str, tuple[str, ...]]
) -> list[dict]:
    rows: list[dict] = []
    # Seeds vary the model only (train.split_seed stays): every seed meets the baselines of
    # the first on the same split and the same users.
    seeds = [
        _train(
            label,
            f"{DEFAULT}, seed {i}",
            _config(base, (f"train.seed={42 + i}",)),
            warehouse,
            workdir / f"seed-{i}",
            baselines=i == 0,
        )
        for i in range(args.seeds)
    ]
    first = seeds[0]
    baselines = [
        {
            "dataset": label,
            "scorer": BASELINE_NAMES.get(name, name),
            "baseline": name,
            "metrics": m,
            "params": first["baseline_choices"].get(name, {}).get("params", {}),
            "trials": first["baseline_choices"].get(name, {}).get("trials", []),
        }
        for name, m in first["all_metrics"].items()
        if name != "model"
    ]
    best = _best_baselines(baselines)
    rows.append(_median_row(label, seeds, best))
    rows += [
        {k: v for k, v in s.items() if k not in ("all_metrics", "baseline_choices")} | {"seed_run": True} for s in seeds
    ]
    rows += baselines
    for name, overrides in variants.items():
        trained = _train(
            label,
            f"two-tower, {name}",
            _config(base, (f"train.seed={42}", *overrides)),
            warehouse,
            workdir / name.replace(" ", "_")[:40],
            baselines=name == VARIANTS["label"][0],
        )
        trained["variant_of"] = DEFAULT
        trained["overrides"] = list(overrides)
        if name == VARIANTS["label"][0]:  # its own test set: its own baselines beside it
            trained["baselines"] = {n: m for n, m in trained["all_metrics"].items() if n != "model"}
        rows.append({k: v for k, v in trained.items() if k not in ("all_metrics", "baseline_choices")})
    return rows


def _train(dataset: str, scorer: str, cfg, warehouse, workdir: Path, baselines: bool) -> dict:
    from models.training import train_and_evaluate

    started = time.perf_counter()
    result = train_and_evaluate(cfg, workdir, warehouse, baselines=baselines, verbose=0)
    seconds = time.perf_counter() - started
    for name, m in result.metrics.items():
        figures = ", ".join(f"{k} {m[k]:.4f}" for k in COMPARED if k in m)
        print(
            f"{dataset}: {scorer if name == 'model' else BASELINE_NAMES.get(name, name)}: {figures}"
            + (f" (best epoch {result.best_epoch}, {seconds:.0f} s)" if name == "model" else ""),
            file=sys.stderr,
            flush=True,
        )
    return {
        "dataset": dataset,
        "scorer": scorer,
        "metrics": result.metrics["model"],
        "all_metrics": result.metrics,
        "comparisons": result.comparisons,
        "baseline_choices": result.baseline_choices,
        "split": result.split,
        "best_epoch": result.best_epoch,
        "epochs_run": len(result.history),
        "examples_per_second": round(result.examples_per_second, 1),
        "seconds": round(seconds, 1),
        "validation": result.history,
    }


def _best_baselines(baselines: list[dict]) -> dict[str, str]:
    """metric -> the baseline with the best value of it."""
    return {
        m: max(baselines, key=lambda b: b["metrics"].get(m, -1.0))["baseline"]
        for m in COMPARED
        if any(m in b["metrics"] for b in baselines)
    }


def _median_row(dataset: str, seeds: list[dict], best: dict[str, str]) -> dict:
    """The default model over its seeds: medians, ranges, and the verdict per metric."""
    keys = [k for k in seeds[0]["metrics"] if all(k in s["metrics"] for s in seeds)]
    metrics = {k: statistics.median(s["metrics"][k] for s in seeds) for k in keys}
    ranges = {k: [min(s["metrics"][k] for s in seeds), max(s["metrics"][k] for s in seeds)] for k in keys}
    verdicts = {}
    baseline_metrics = seeds[0]["all_metrics"]
    for metric, baseline in best.items():
        # A win: the first seed's paired-bootstrap interval against the baseline is above
        # zero (same users) and every seed beats the baseline's figure; a loss, the mirror.
        diff = seeds[0]["comparisons"].get(baseline, {}).get(metric)
        theirs = baseline_metrics[baseline][metric]
        values = [s["metrics"][metric] for s in seeds]
        win = diff is not None and diff["lo"] > 0 and min(values) > theirs
        loss = diff is not None and diff["hi"] < 0 and max(values) < theirs
        verdicts[metric] = {
            "against": baseline,
            "baseline_value": theirs,
            "verdict": "win" if win else "loss" if loss else "tie (within the interval)",
            "difference": diff["difference"] if diff else None,
            "interval": [diff["lo"], diff["hi"]] if diff else None,
        }
    return {
        "dataset": dataset,
        "scorer": f"{DEFAULT}, median of {len(seeds)} seed(s)",
        "metrics": metrics,
        "ranges": ranges,
        "verdicts": verdicts,
        "split": seeds[0]["split"],
        "best_epoch": [s["best_epoch"] for s in seeds],
        "epochs_run": [s["epochs_run"] for s in seeds],
        "examples_per_second": round(statistics.median(s["examples_per_second"] for s in seeds), 1),
        "validation": seeds[0]["validation"],
    }


def _cell(m: dict, key: str, ranges: dict | None = None) -> str:
    if key not in m:
        return ""
    text = f"{m[key]:.3f}"
    if ranges and key in ranges and len(set(ranges[key])) > 1:
        text += f" ({ranges[key][0]:.3f}–{ranges[key][1]:.3f})"
    elif f"{key}_lo" in m:
        text += f" [{m[f'{key}_lo']:.3f}, {m[f'{key}_hi']:.3f}]"
    return text


def markdown(rows: list[dict]) -> str:
    shown = [c for c in COLUMNS if any(c in r["metrics"] for r in rows)]
    out = []
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        group = [r for r in rows if r["dataset"] == dataset and not r.get("seed_run")]
        sizes = group[0]["metrics"]
        out += [
            "",
            f"### {dataset}: {int(sizes.get('eval_users', 0)):,} test users, {int(sizes.get('eval_positives', 0)):,} test positives, "
            f"{group[0].get('split', {}).get('candidates', {}).get('eligible', 0):,} eligible candidates",
            "",
        ]
        out += ["Seed medians with (min–max over seeds); single runs with [95% bootstrap interval over users].", ""]
        out += ["| scorer | " + " | ".join(shown) + " | best epoch | train ex/s |", "|---" * (len(shown) + 3) + "|"]
        for r in group:
            cells = [_cell(r["metrics"], c, r.get("ranges")) for c in shown]
            name = r["scorer"] + (" (cannot score cold items)" if r.get("baseline") else "")
            if r.get("params"):
                name += " " + ", ".join(
                    f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in r["params"].items()
                )
            out.append(
                f"| {name} | "
                + " | ".join(cells)
                + f" | {r.get('best_epoch', '')} | {r.get('examples_per_second', '')} |"
            )
        verdicts = next((r["verdicts"] for r in group if r.get("verdicts")), {})
        if verdicts:
            out += ["", "Default model against the best baseline (paired bootstrap over the same users):", ""]
            for metric, v in verdicts.items():
                interval = (
                    f", difference {v['difference']:+.4f} [{v['interval'][0]:+.4f}, {v['interval'][1]:+.4f}]"
                    if v["interval"]
                    else ""
                )
                out.append(
                    f"- {metric}: {v['verdict']} against {BASELINE_NAMES.get(v['against'], v['against'])}{interval}"
                )
    return "\n".join(out)


if __name__ == "__main__":
    run()
