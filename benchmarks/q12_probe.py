"""Issue #12 probe: one model configuration on a time split (MovieLens, or the synthetic
`small` world), on the *validation* split (the training log with the test window removed,
split again by the same rule) or on the test split, with optional baselines and
diagnostics.

    python -m benchmarks.q12_probe --dataset ml-100k|ml-1m|synthetic --holdout validation \
        --epochs 15 [--set model.temperature=0.05 ...] [--baselines] [--out FILE]

`--holdout validation` never reads the test window: it drops every event at or after the
test cutoff the harness's split would choose, and the project's own time split then
carves its test window (here: a validation window) out of what is left.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
CACHE = Path("/tmp/q12-warehouses")
SHOWN = ("recall@10", "recall@100", "recall@500", "ndcg@10")


def _warehouse(dataset: str, holdout: str, ml1m_users: int):
    import pyarrow.compute as pc

    from benchmarks.model_quality import _config, _subsample_users
    from models.splits import load_split
    from warehouse import Warehouse
    from warehouse.movielens import convert_movielens

    name = f"{dataset}-{ml1m_users}" if dataset == "ml-1m" else dataset
    root = CACHE / name
    base = ["config/presets/movielens.toml", f"root=file://{root}"]
    if dataset == "ml-1m":
        base += ["train.min_test_users=100", "train.min_test_positives=1000"]
    if dataset == "synthetic":
        # The world benchmarks/model_quality.py measures: the default config, `small`.
        base = [None, f"root=file://{root}", "world.size=small"]
        if not (root / ".done").exists():
            from warehouse.synthetic import generate_world

            generate_world(_config(base).world, Warehouse.open(f"file://{root}"), progress=False)
            (root / ".done").write_text("ok")
    elif not (root / ".done").exists():
        full = Warehouse.open(f"file://{root}-full")
        convert_movielens(SHARED / dataset, full)
        if dataset == "ml-1m" and ml1m_users:
            target = Warehouse.open(f"file://{root}")
            _subsample_users(full, target, ml1m_users)
        else:
            import shutil

            shutil.copytree(f"{root}-full", root, dirs_exist_ok=True)
        (root / ".done").write_text("ok")
    warehouse = Warehouse.open(f"file://{root}")
    if holdout == "test":
        return base, warehouse
    vroot = CACHE / f"{name}-validation"
    if not (vroot / ".done").exists():
        cfg = _config(base)
        split = load_split(warehouse, cfg.train, cfg.features)
        target = Warehouse.open(f"file://{vroot}")
        for table in ("users", "stories", "creators"):
            target.write_table(table, warehouse.read_table(table))
        events = warehouse.read_events()
        target.write_events(events.filter(pc.less(events["ts"], split.as_of)))
        (vroot / ".done").write_text(f"test cutoff {split.as_of}")
    base[1] = f"root=file://{vroot}"
    return base, Warehouse.open(f"file://{vroot}")


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--dataset", default="ml-100k", choices=["ml-100k", "ml-1m", "synthetic"])
    p.add_argument("--ml1m-users", type=int, default=1000)
    p.add_argument("--holdout", default="validation", choices=["validation", "test"])
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--set", action="append", default=[], help="config override k=v")
    p.add_argument("--baselines", action="store_true")
    p.add_argument("--out", type=Path)
    p.add_argument(
        "--curve",
        action="store_true",
        help="after every epoch, also measure the held-out window (only with --holdout validation)",
    )
    args = p.parse_args(argv)
    if args.curve and args.holdout != "validation":
        p.error("--curve measures the held-out window after every epoch: only on the validation split")

    from benchmarks.model_quality import _config
    from models.training import train_and_evaluate

    base, warehouse = _warehouse(args.dataset, args.holdout, args.ml1m_users)
    cfg = _config(base, (f"train.epochs={args.epochs}", f"train.seed={args.seed}", *args.set))
    curve = _per_epoch_curve() if args.curve else None
    started = time.perf_counter()
    workdir = Path("/tmp/q12-work") / f"{int(time.time())}"
    result = train_and_evaluate(cfg, workdir, warehouse, baselines=args.baselines, verbose=0)
    seconds = time.perf_counter() - started
    out = {
        "command": "python -m benchmarks.q12_probe " + " ".join(argv if argv is not None else sys.argv[1:]),
        "dataset": args.dataset,
        "holdout": args.holdout,
        "overrides": args.set,
        "seed": args.seed,
        "epochs": args.epochs,
        "seconds": round(seconds, 1),
        "best_epoch": result.best_epoch,
        "history": result.history,
        "split": result.split,
        "metrics": result.metrics,
        "comparisons": result.comparisons,
        "baseline_params": {k: v.get("params") for k, v in result.baseline_choices.items()},
    }
    for name, m in result.metrics.items():
        seg = " | ".join(
            f"{s} n={int(m.get(f'{s}_user_eval_users', 0))} r@10 {m.get(f'{s}_user_recall@10', float('nan')):.3f}"
            f" r@100 {m.get(f'{s}_user_recall@100', float('nan')):.3f} ndcg {m.get(f'{s}_user_ndcg@10', float('nan')):.3f}"
            for s in ("new", "returning")
        )
        print(
            f"{args.holdout} {name}: "
            + ", ".join(f"{k} {m[k]:.4f}" for k in SHOWN if k in m)
            + f"  [{int(m['eval_users'])} users, {int(m['eval_positives'])} pos] {seg}"
        )
    print(
        "best epoch",
        result.best_epoch,
        "val acc",
        [round(h.get("val_top_100_accuracy", h.get("val_window_recall@100", -1)), 3) for h in result.history],
        f"{seconds:.0f} s",
    )
    if curve is not None:
        out["window_curve"] = curve
        for row in curve:
            print("epoch", row["epoch"], {k: round(v, 4) for k, v in row.items() if k != "epoch"})
    out["diagnostics"] = _diagnostics(result, cfg, warehouse)
    print(json.dumps(out["diagnostics"], indent=1))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=1, default=float))
    return out


def _per_epoch_curve() -> list[dict]:
    """Patches models.training so that every epoch also measures the evaluation window
    (the validation window under --holdout validation) over the eligible candidates.

    A diagnostic: it wraps `evaluation_sets` (as models.training imports it) and
    `EpochValidator.on_epoch_end`, so the training loop itself stays as it is."""

    import models.training as training
    from models.early_stopping import EpochValidator
    from models.evaluation import measure, positions
    from models.features import story_features, user_features
    from models.tower_runner import embed_with_tower

    state: dict = {}
    curve: list[dict] = []
    original_sets, original_end = training.evaluation_sets, EpochValidator.on_epoch_end

    def evaluation_sets(catalog, history, split, candidates, tcfg, warehouse):
        sets = original_sets(catalog, history, split, candidates, tcfg, warehouse)
        state.update(catalog=catalog, history=history, split=split, candidates=candidates, sets=sets)
        return sets

    def on_epoch_end(self, epoch, logs=None):
        original_end(self, epoch, logs)
        h, split, cands, data = state["history"], state["split"], state["candidates"], state["sets"]["eligible"]
        rows = cands.sets["eligible"]
        users = data.users
        u = embed_with_tower(self._model.user_tower, user_features(h, users, split.user_as_of(h, users)))
        s = embed_with_tower(self._model.story_tower, story_features(h, rows, cands.story_as_of(rows)))
        position = positions(users, len(h.catalog.user_ids))
        m = measure(lambda q: u[position[q]] @ s.T, data, [10, 100, 500]).metrics
        curve.append(
            {"epoch": epoch + 1, **{k: float(m[k]) for k in ("recall@10", "recall@100", "recall@500", "ndcg@10")}}
        )

    training.evaluation_sets = evaluation_sets
    EpochValidator.on_epoch_end = on_epoch_end
    return curve


def _diagnostics(result, cfg, warehouse):
    """How close the model's story scores are to popularity, per story."""
    import numpy as np

    from models.features import Catalog, EventHistory, story_features
    from models.splits import load_split

    fcfg = cfg.features
    catalog = Catalog.from_tables(
        warehouse.read_table("users"), warehouse.read_table("stories"), warehouse.read_table("creators"), fcfg
    )
    split = load_split(warehouse, cfg.train, fcfg)
    history = EventHistory.from_tables(split.train_parts(), catalog, fcfg)
    stories = np.arange(len(catalog.story_ids))
    feats = story_features(history, stories, np.full(len(stories), split.as_of))
    emb = result.model.story_tower(feats, training=False).numpy()
    names = __import__("models.features", fromlist=["story_stat_names"]).story_stat_names(fcfg)
    stats = feats["story_stats"]
    # A user-independent "popularity direction": the mean story embedding of recent positives.
    mean_dir = emb.mean(axis=0)
    proj = emb @ mean_dir / max(np.linalg.norm(mean_dir), 1e-9)
    out = {
        "mean_story_vector_norm": float(np.linalg.norm(mean_dir)),
    }
    for key in ("log_positives_7d", "log_positives_28d", "log_positives_all"):
        if key in names:
            col = stats[:, names.index(key)]
            out[f"corr(mean-direction score, {key})"] = float(np.corrcoef(proj, col)[0, 1])
    # Top 10 of the model vs the 7-day recent popularity top 10, new vs returning users.
    from models.features import user_features

    users = np.unique(catalog.user_index(split.test["user_id"].to_pylist()))
    ufeats = user_features(history, users, split.user_as_of(history, users))
    uemb = result.model.user_tower(ufeats, training=False).numpy()
    scores = uemb @ emb.T
    recent = np.zeros(len(stories))
    pos = history.positive & (history.ts >= split.as_of - 7 * 86400)
    np.add.at(recent, history.story[pos], 1)
    pop10 = set(np.argsort(-recent)[:10].tolist())
    has = np.zeros(len(catalog.user_ids), bool)
    has[history.user] = True
    top10 = np.argsort(-scores, axis=1)[:, :10]
    for seg, mask in (("new", ~has[users]), ("returning", has[users])):
        if mask.any():
            overlap = [len(pop10 & set(r.tolist())) / 10 for r in top10[mask]]
            out[f"{seg}: top10 overlap with 7d recent-pop top10"] = float(np.mean(overlap))
            out[f"{seg}: mean 7d count of top10"] = float(recent[top10[mask]].mean())
            out[f"{seg}: distinct stories in top10s / users"] = f"{len(np.unique(top10[mask]))} / {int(mask.sum())}"
    out["7d recent-pop top10 mean count"] = float(np.sort(recent)[-10:].mean())
    return out


if __name__ == "__main__":
    main()
