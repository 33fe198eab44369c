"""Small hand-made results of a benchmark run (benchmarks/results.json's shape), for the
tests of the benchmark driver, figures, targets, plots and report (no benchmark runs).

Hand-worked figures (see `hand_made_results`):
  index: exact 100 QPS; ef=50 reaches recall 0.991 at 6,000 QPS = 60x exact -> met;
         ef=10 is faster (9,000) but under 0.99, so it does not count; incremental
         0.4 s vs 10 s = 25x -> met.
  serving: steady p99 8 ms at 1,000 req/s -> met; saturation 2,900 vs raw 10,000 QPS
         = 0.29 < 0.3 -> not met; reload-window p99 17 ms vs 2 x 8 = 16 -> not met.
  Beam: stories ratio 0.5 (>= 0.5) -> met; users 0.49 -> not met.
  MovieLens: top-100 accuracy 0.41 >= 0.38 -> met; recall@100 0.60 < 0.62 -> not met.
"""

from __future__ import annotations

import numpy as np

from benchmarks.figures import model_versions, quantile_grid, summary_figures
from benchmarks.targets import evaluate_targets


def _quality_row(dataset: str, scorer: str, recalls: dict, **extra) -> dict:
    metrics = {
        "eval_users": 900.0,
        "eval_events": 20000.0,
        **{f"recall@{k}": v for k, v in recalls.items()},
        **extra.pop("metrics", {}),
    }
    return {"dataset": dataset, "scorer": scorer, "metrics": metrics, **extra}


def _history(losses, accuracies):
    return [
        {"epoch": i + 1, "loss": loss, "val_top_100_accuracy": acc}
        for i, (loss, acc) in enumerate(zip(losses, accuracies, strict=True))
    ]


DEMO_TAIL = """versions served:
model 20261022T000000Z-ebr_train-manual, dim 128, state 1 since 2026-11-24T07:25:17.690+00:00
kind              version                        served since                   items  memory
embeddings/users  20261021T200000Z-users-manual  2026-11-24T07:25:17.690+00:00  3000   1.8 MiB
indexes/stories   20261021T220000Z-index-manual  2026-11-24T07:25:17.690+00:00  4938   3.5 MiB
"""
ML = "ml-100k (TFRS protocol: random 80/20)"
ML_TIME = "ml-100k (time split)"
WORLD = "synthetic-small (time split)"


def _verdict(against: str, value: float, verdict: str) -> dict:
    return {
        "against": against,
        "baseline_value": value,
        "verdict": verdict,
        "difference": 0.01,
        "interval": [-0.01, 0.03],
    }


def _baseline(dataset: str, name: str, recalls: dict, **metrics) -> dict:
    return _quality_row(dataset, name, recalls, metrics=metrics, baseline=name, params={})


def hand_made_results(*, with_latency: bool = True) -> dict:
    model_quality = {
        "rows": [
            _quality_row(
                ML,
                "two-tower (default), median of 3 seed(s)",
                {10: 0.2, 50: 0.5, 100: 0.60, 500: 0.95},
                metrics={"top_k_accuracy@100": 0.41, "ndcg@10": 0.4},
                best_epoch=[2, 2, 3],
                epochs_run=[3, 3, 3],
                examples_per_second=1900.0,
                validation=_history([6.6, 6.5, 6.45], [0.36, 0.40, 0.39]),
                verdicts={"recall@100": _verdict("als", 0.69, "loss")},
            ),
            _quality_row(ML, "two-tower (default), seed 0", {100: 0.61}, seed_run=True),
            _baseline(ML, "popularity", {10: 0.1, 50: 0.3, 100: 0.43, 500: 0.85}, **{"top_k_accuracy@100": 0.30}),
            _baseline(ML, "als", {10: 0.2, 50: 0.5, 100: 0.69, 500: 0.94}),
            _quality_row(
                ML_TIME,
                "two-tower (default), median of 3 seed(s)",
                {10: 0.1, 100: 0.40, 500: 0.80},
                metrics={"ndcg@10": 0.2},
                verdicts={
                    "recall@10": _verdict("ease", 0.09, "win"),
                    "recall@100": _verdict("ease", 0.41, "tie (within the interval)"),
                    "recall@500": _verdict("als", 0.79, "tie (within the interval)"),
                    "ndcg@10": _verdict("ease", 0.18, "win"),
                },
            ),
            _baseline(ML_TIME, "ease", {10: 0.09, 100: 0.41, 500: 0.78}, **{"ndcg@10": 0.18}),
            _quality_row(
                WORLD,
                "two-tower (default), median of 1 seed(s)",
                {10: 0.16, 100: 0.385, 500: 0.7},
                metrics={"language_match@10": 0.96, "ndcg@10": 0.14},
                best_epoch=[1],
                epochs_run=[2],
                examples_per_second=2200.0,
                validation=_history([3.8, 3.0], [0.45, 0.46]),
                verdicts={},
            ),
            _baseline(
                WORLD,
                "recent_popularity",
                {10: 0.006, 100: 0.025, 500: 0.2},
                **{"ndcg@10": 0.01, "language_match@10": 0.13},
            ),
            _baseline(WORLD, "als", {10: 0.06, 100: 0.24, 500: 0.6}, **{"ndcg@10": 0.05, "language_match@10": 0.87}),
            _quality_row(
                WORLD,
                "two-tower, without in-batch negatives (pointwise on impressions)",
                {10: 0.05, 100: 0.235},
                metrics={"language_match@10": 0.92},
                best_epoch=2,
                epochs_run=2,
                examples_per_second=3000.0,
                validation=_history([0.58, 0.49], [0.09, 0.29]),
            ),
        ]
    }
    embedding_jobs = {
        "rows": [
            {
                "job": "stories_embeddings",
                "rows": 200_000,
                "raw_tower_median_per_s": 20_000.0,
                "job_median_per_s": 10_000.0,
                "ratio_job_over_raw": 0.5,
                "plain_loop_median_per_s": 12_000.0,
                "ratio_job_over_plain_loop": 0.833,
                "job_median_seconds": 20.0,
                "multi_process_2_workers_seconds": 30.0,
                "multi_process_2_workers_per_s": 6_666.7,
            },
            {
                "job": "users_embeddings",
                "rows": 30_000,
                "raw_tower_median_per_s": 10_000.0,
                "job_median_per_s": 4_900.0,
                "ratio_job_over_raw": 0.49,
                "plain_loop_median_per_s": 5_000.0,
                "ratio_job_over_plain_loop": 0.98,
                "job_median_seconds": 6.1,
                "multi_process_2_workers_seconds": 9.0,
                "multi_process_2_workers_per_s": 3_333.3,
            },
        ]
    }
    index_build = {
        "data": {"n": 200_000, "dim": 128, "queries_per_set": 1000},
        "params": {"M": 16, "ef_construction": 200, "build_threads": 2},
        "exact": {"qps_single_query": 100.0},
        "hnswlib": {
            "build": {"vectors_per_second": 3000.0, "build_seconds": 66.7, "bytes_per_vector": 660.0},
            # Two query sets; the first (held-out points) decides. On the other set,
            # ef=10 reaches 0.99 at 9,500 QPS: it must not count.
            "sweep": [
                {"query_set": "held-out", "ef": 10, "recall_at_10": 0.95, "qps": 9000.0},
                {"query_set": "held-out", "ef": 50, "recall_at_10": 0.991, "qps": 6000.0},
                {"query_set": "held-out", "ef": 100, "recall_at_10": 0.999, "qps": 4000.0},
                {"query_set": "noise 0.3", "ef": 10, "recall_at_10": 0.995, "qps": 9500.0},
            ],
        },
        "faiss": {
            "build": {"vectors_per_second": 2500.0, "build_seconds": 80.0, "bytes_per_vector": 656.0},
            "sweep": [
                {"ef": 10, "recall_at_10": 0.94, "qps": 5000.0},
                {"ef": 50, "recall_at_10": 0.995, "qps": 3000.0},
            ],
        },
        "incremental": {"fraction": 0.01, "incremental_seconds": 0.4, "full_rebuild_seconds": 10.0, "speedup": 25.0},
    }
    serving = {
        "data": {"stories": 200_000, "dim": 128, "users": 50_000, "k": 10, "concurrency": 16},
        "index": {"version": "20261124T000000Z-bench"},
        "raw_hnswlib_single_thread": {"qps": 10_000.0, "p50_ms": 0.09, "p99_ms": 0.2},
        "searchers": {
            "process": {
                "saturation_closed_loop": {
                    "requests": 29_000,
                    "failed": 0,
                    "qps": 2900.0,
                    "p50_ms": 5.0,
                    "p99_ms": 12.0,
                    "p999_ms": 15.0,
                    "max_ms": 20.0,
                },
                "steady_fixed_rate": {
                    "offered_rate": 1000.0,
                    "requests": 10_000,
                    "failed": 0,
                    "qps": 1000.0,
                    "p50_ms": 2.0,
                    "p99_ms": 8.0,
                    "p999_ms": 11.0,
                    "max_ms": 14.0,
                },
                "reload_fixed_rate": {
                    "offered_rate": 1000.0,
                    "whole_phase": {
                        "requests": 15_000,
                        "failed": 0,
                        "qps": 1000.0,
                        "p50_ms": 2.5,
                        "p99_ms": 12.0,
                        "p999_ms": 30.0,
                        "max_ms": 40.0,
                    },
                    "reload_window": {
                        "requests": 3000,
                        "failed": 0,
                        "qps": 1000.0,
                        "p50_ms": 3.0,
                        "p99_ms": 17.0,
                        "p999_ms": 30.0,
                        "max_ms": 40.0,
                    },
                    "window_seconds": 2.0,
                    "served_after": "20261124T000000Z-bench-reload-process",
                    "server_reload_seconds": 1.5,
                },
                "memory": {
                    "loaded_index_memory_bytes": 150 * 2**20,
                    "index_process_rss_bytes": 300 * 2**20,
                    "server_tree_rss_loaded": 400 * 2**20,
                    "server_tree_rss_peak_during_reload": 560 * 2**20,
                },
            }
        },
    }
    records = {
        name: {
            "name": name,
            "what": name,
            "command": f"python benchmarks/{name}.py",
            "wall_seconds": 60.0,
            "ok": True,
            "results": data,
        }
        for name, data in (
            ("model_quality", model_quality),
            ("embedding_jobs", embedding_jobs),
            ("index_build", index_build),
            ("serving", serving),
        )
    }
    if with_latency:
        probs = quantile_grid()
        records["serving"]["latency"] = {
            "probabilities": probs,
            "searcher": "process",
            "phases": {
                "steady": {"requests": 10_000, "failed": 0, "quantiles_ms": list(np.linspace(0.5, 14.0, len(probs)))},
                "reload": {"requests": 15_000, "failed": 0, "quantiles_ms": list(np.linspace(0.5, 40.0, len(probs)))},
            },
            "reload_timeline": {
                "columns": ["t_seconds", "p50_ms", "p99_ms", "max_ms", "requests"],
                "bin_seconds": 0.1,
                "rows": [[i / 10, 2.0 + (i == 30) * 10, 8.0 + (i == 30) * 20, 9.0, 100] for i in range(60)],
                "published_at_seconds": 2.0,
                "swapped_at_seconds": 4.0,
            },
        }
    records["demo"] = {
        "name": "demo",
        "what": "demo",
        "command": "make -o .venv/.ebr-installed demo",
        "wall_seconds": 95.0,
        "ok": True,
        "results": None,
        "output_tail": DEMO_TAIL,
    }
    return {
        "schema": 1,
        "mode": "full",
        "started_at": "2026-11-24T07:00:00+00:00",
        "finished_at": "2026-11-24T07:28:00+00:00",
        "wall_seconds": 1680.0,
        "command": "python benchmarks/run_all.py",
        "machine": {
            "cpus": 2,
            "memory_gib": 23.5,
            "python": "3.11.7",
            "platform": "Linux",
            "load_average_at_start": [3.2, 2.0, 1.0],
            "load_average_at_end": [2.1, 2.0, 1.0],
            "packages": {"hnswlib": "0.8.0"},
        },
        "git": {
            "commit": "0123456789abcdef0123456789abcdef01234567",
            "branch": "main",
            "subject": "a commit",
            "uncommitted_paths": [],
        },
        "notes": ["the machine was shared"],
        "benchmarks": records,
        "figures": summary_figures(records),
        "targets": evaluate_targets(records),
        "versions": model_versions(records),
    }


def find_target(results: dict, fragment: str) -> dict:
    matches = [t for t in results["targets"] if fragment in t["target"]]
    assert len(matches) == 1, [t["target"] for t in results["targets"]]
    return matches[0]
