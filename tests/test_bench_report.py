"""The benchmark driver (run_all, runner), figures, targets, plots and report on small
hand-made results (no benchmark runs).

Hand-worked figures (see `_results`):
  index: exact 100 QPS; ef=50 reaches recall 0.991 at 6,000 QPS = 60x exact -> met;
         ef=10 is faster (9,000) but under 0.99, so it does not count; incremental
         0.4 s vs 10 s = 25x -> met.
  serving: steady p99 8 ms at 1,000 req/s -> met; saturation 2,900 vs raw 10,000 QPS
         = 0.29 < 0.3 -> not met; reload-window p99 17 ms vs 2 x 8 = 16 -> not met.
  Beam: stories ratio 0.5 (>= 0.5) -> met; users 0.49 -> not met.
  MovieLens: top-100 accuracy 0.41 >= 0.38 -> met; recall@100 0.60 < 0.62 -> not met.
"""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import numpy as np
import pytest

from benchmarks import plots, report, run_all
from benchmarks.figures import model_versions, quantile_grid, serving_latency_extract, summary_figures
from benchmarks.runner import Benchmark, run_benchmark
from benchmarks.targets import evaluate_targets

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


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


def _results(*, with_latency: bool = True) -> dict:
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


def _target(results: dict, fragment: str) -> dict:
    matches = [t for t in results["targets"] if fragment in t["target"]]
    assert len(matches) == 1, [t["target"] for t in results["targets"]]
    return matches[0]


def test_targets_are_computed_from_the_figures():
    results = _results()
    recall = _target(results, "recall@10 >= 0.99 at >= 50x")
    assert recall["met"] is True and "ef=50" in recall["measured"] and "60.0x" in recall["measured"]
    assert "held-out" in recall["note"]
    assert recall["at_target_size"] is False  # 200,000 < 1,000,000
    assert _target(results, "incremental")["met"] is True
    assert _target(results, "p99 <= 10 ms")["met"] is True
    assert _target(results, "p99 <= 10 ms")["target"].endswith("[searcher: process]")
    served = _target(results, "30% of raw")
    assert served["met"] is False and served["measured"].startswith("0.29")
    reload = _target(results, "during a reload")
    assert reload["met"] is False and "2.12x" in reload["measured"]
    assert _target(results, "zero failed")["met"] is True
    assert _target(results, "stories_embeddings")["met"] is True  # 0.5 is enough
    assert _target(results, "stories_embeddings")["at_target_size"] is True
    assert _target(results, "users_embeddings")["met"] is False
    assert _target(results, "top-100 accuracy >= 0.40")["met"] is True
    assert _target(results, "seen-excluded recall@100 >= the best baseline")["met"] is False  # 0.60 vs ALS 0.69
    # ML-100K time split: recall@100 0.40 < EASE's 0.41, a tie within the interval, but the
    # target asks for >= on every depth.
    time_split = _target(results, "ml-100k time split")
    assert time_split["met"] is False and "recall@100 0.400 vs ease 0.410" in time_split["measured"]
    assert _target(results, "ahead of recent popularity and ALS")["met"] is True
    assert _target(results, "language match@10")["met"] is True


def test_no_ef_reaching_the_recall_fails_the_target_and_a_failed_benchmark_is_not_measured():
    results = _results()
    records = results["benchmarks"]
    for row in records["index_build"]["results"]["hnswlib"]["sweep"]:
        row["recall_at_10"] = 0.98
    records["serving"] = {"name": "serving", "ok": False, "error": "exit code 1", "results": None}
    targets = evaluate_targets(records)
    recall = next(t for t in targets if "0.99 at >= 50x" in t["target"])
    assert recall["met"] is False and "no ef" in recall["measured"]
    failed = [t for t in targets if t["issue"] == 6]
    assert len(failed) == 1 and failed[0]["met"] is None and "exit code 1" in failed[0]["measured"]


def test_markdown_shows_figures_targets_and_commands():
    text = report.markdown(_results())
    assert "| #5 | hnswlib recall@10 >= 0.99" in text
    assert "| **no** |" in text and "| yes |" in text
    assert "6,000 QPS (60.0x exact)" in text
    assert "`make -o .venv/.ebr-installed demo`" in text
    assert "Commit `0123456789ab`" in text


def test_every_plot_is_a_valid_png(tmp_path):
    import matplotlib.image

    written = plots.write_all(_results(), tmp_path)
    assert set(written) == {"training_history", "recall_at_k", "recall_qps", "serving_latency", "embedding_throughput"}
    for path in written.values():
        assert path.read_bytes()[:8] == PNG_SIGNATURE
        height, width, _ = matplotlib.image.imread(path).shape
        assert width > 600 and height > 300


def test_latency_plot_falls_back_to_percentiles_and_missing_benchmarks_are_skipped(tmp_path):
    results = _results(with_latency=False)
    del results["benchmarks"]["index_build"]
    written = plots.write_all(results, tmp_path)
    assert "serving_latency" in written and written["serving_latency"].read_bytes()[:8] == PNG_SIGNATURE
    assert "recall_qps" not in written


def test_serving_latency_extract_from_load_generator_arrays(tmp_path):
    rng = np.random.default_rng(0)
    n = 1000
    np.savez(
        tmp_path / "loadgen-rate-2.npz",
        start=np.arange(n) / 1000,
        latency=rng.uniform(0.001, 0.002, n),
        status=np.full(n, 200),
        version=np.zeros(n, dtype=int),
        names=np.array(["v1"]),
    )
    # Reload phase: 3 s at 1,000/s; the new version answers from t = 2.0 s.
    start = np.arange(3 * n) / 1000
    np.savez(
        tmp_path / "loadgen-rate-3.npz",
        start=start,
        latency=np.where((start > 1.0) & (start < 2.0), 0.05, 0.001),
        status=np.full(3 * n, 200),
        version=(start >= 2.0).astype(int),
        names=np.array(["v1", "v2"]),
    )
    served = {
        "searchers": {
            "process": {"reload_fixed_rate": {"served_after": "v9"}},
            "inline": {"reload_fixed_rate": {"served_after": "v2", "window_seconds": 1.5}},
        }
    }
    extract = serving_latency_extract(tmp_path, served)
    assert extract["searcher"] == "inline"  # the mode whose new version the answers name
    assert extract["phases"]["steady"]["requests"] == n
    assert (
        1.0 <= extract["phases"]["steady"]["quantiles_ms"][0] and extract["phases"]["steady"]["quantiles_ms"][-1] <= 2.0
    )
    timeline = extract["reload_timeline"]
    assert timeline["swapped_at_seconds"] == 2.0 and timeline["published_at_seconds"] == 0.5
    assert (
        extract["phases"]["reload_window"]["requests"] == 2500
    )  # from 0.5 s to the last request at 2.999 s (window ends at 3.0 s)
    slow_bin = next(r for r in timeline["rows"] if r[0] == 1.5)
    assert slow_bin[1] == pytest.approx(50.0)
    assert serving_latency_extract(tmp_path / "missing", served) is None
    assert (
        serving_latency_extract(tmp_path, {"searchers": {"process": {"reload_fixed_rate": {"served_after": "v9"}}}})
        is None
    )


def test_the_first_serving_format_and_an_unreadable_json_are_handled():
    results = _results()
    records = results["benchmarks"]
    serving = records["serving"]["results"]
    mode = serving.pop("searchers")["process"]
    serving["memory"] = {"loaded_index_memory_bytes": 1, "server_rss_loaded": 2, "server_rss_peak_during_reload": 3}
    serving["served"] = {k: v for k, v in mode.items() if k != "memory"}
    targets = [t for t in evaluate_targets(records) if t["issue"] == 6]
    assert [t["met"] for t in targets] == [True, False, False, True]
    assert not any("[searcher" in t["target"] for t in targets)
    del records["index_build"]["results"]["exact"]
    unreadable = [t for t in evaluate_targets(records) if t["issue"] == 5]
    assert len(unreadable) == 1 and unreadable[0]["met"] is None and "KeyError" in unreadable[0]["measured"]
    rows = summary_figures(records)
    assert any(r["area"] == "index_build" and "could not read" in r["text"] for r in rows)
    assert any(r["area"] == "serving" for r in rows)  # the others are still summarised


def test_html_report_embeds_the_plots_and_shows_the_figures(tmp_path):
    results_path = tmp_path / "results.json"
    results_path.write_text(json.dumps(_results()))
    out = report.write_report(results_path, tmp_path / "report.html")
    page = out.read_text()
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == 5
    assert all(base64.b64decode(data)[:8] == PNG_SIGNATURE for data in images)
    assert "0123456789abcdef0123456789abcdef01234567" in page
    assert "20261124T000000Z-bench-reload-process" in page
    assert (
        "20261022T000000Z-ebr_train-manual" in page and "20261021T220000Z-index-manual" in page
    )  # from the demo's output
    assert "Targets: 8 of 13 met" in page
    assert "6,000 QPS (60.0x exact)" in page
    assert 'class="notmet"' in page and "the machine was shared" in page
    assert "<script" not in page and 'src="http' not in page  # self-contained


def test_ebr_report_through_the_cli(tmp_path, capsys):
    from cli.main import main

    results_path = tmp_path / "results.json"
    results_path.write_text(json.dumps(_results()))
    out = tmp_path / "page.html"
    assert main(["report", "--results", str(results_path), "--out", str(out)]) == 0
    assert out.read_text().startswith("<!DOCTYPE html>")
    assert "8 of 13 targets met" in capsys.readouterr().out
    assert main(["report", "--results", str(tmp_path / "none.json")]) == 1
    assert "make bench" in capsys.readouterr().err


def _script(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "fake_bench.py"
    path.write_text("import json, sys, time\nout = sys.argv[sys.argv.index('--out') + 1]\n" + body)
    return path


def test_a_failing_benchmark_is_recorded_not_raised(tmp_path):
    bench = Benchmark(
        "fake",
        "fails",
        str(_script(tmp_path, "print('bad input: n=0', file=sys.stderr)\nsys.exit(3)\n")),
        (),
        ("--x",),
        timeout_s=30,
    )
    record = run_benchmark(bench, tmp_path / "run", quick=True, log_dir=tmp_path / "logs")
    assert record["ok"] is False and record["returncode"] == 3 and record["error"] == "exit code 3"
    assert "bad input: n=0" in record["output_tail"]


def test_a_benchmark_json_is_read_and_a_hung_one_is_killed(tmp_path):
    ok = Benchmark(
        "fake",
        "ok",
        str(_script(tmp_path, "open(out, 'w').write(json.dumps({'value': 7}))\n")),
        ("--full",),
        ("--quick",),
        timeout_s=30,
    )
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    record = run_benchmark(ok, run_dir, quick=False, log_dir=tmp_path / "logs")
    assert record["ok"] is True and record["results"] == {"value": 7}
    assert "--full" in record["command"] and "--quick" not in record["command"]
    hung = Benchmark(
        "fake", "hangs", str(_script(tmp_path, "time.sleep(60)\n")), (), (), timeout_s=30, quick_timeout_s=1.0
    )
    record = run_benchmark(hung, run_dir, quick=True, log_dir=tmp_path / "logs")
    assert record["ok"] is False and "timeout" in record["error"] and record["wall_seconds"] < 30


def test_resummarize_recomputes_from_the_runs_json_files(tmp_path):
    results = _results()
    index_json = tmp_path / "index_build.json"
    index_data = results["benchmarks"]["index_build"]["results"]
    index_data = {**index_data, "incremental": {**index_data["incremental"], "speedup": 12.0}}  # on disk: 12x, not 25x
    index_json.write_text(json.dumps(index_data))
    results["benchmarks"]["index_build"]["json"] = str(index_json)
    results_path = tmp_path / "results.json"
    results_path.write_text(json.dumps(results))
    redone = run_all.resummarize(results_path, plots=False, notes=["other engineers' jobs ran meanwhile"])
    assert _target(redone, "incremental")["met"] is False
    assert json.loads(results_path.read_text())["targets"] == redone["targets"]
    assert "| #5 | incremental update" in (tmp_path / "results.md").read_text()
    assert redone["notes"][-2:][0] == "other engineers' jobs ran meanwhile"
    assert redone["notes"][-1].startswith("figures re-summarised")


def test_an_only_run_keeps_the_other_benchmarks_from_the_previous_results():
    previous = _results()
    rerun = {
        "index_build": {
            **previous["benchmarks"]["index_build"],
            "wall_seconds": 5.0,
            "run_started_at": "2026-11-24T08:00:00+00:00",
        }
    }
    merged, kept = run_all.merge_previous(rerun, previous)
    assert list(merged) == ["model_quality", "embedding_jobs", "index_build", "serving", "demo"]
    assert merged["index_build"]["wall_seconds"] == 5.0
    assert merged["serving"]["run_started_at"] == previous["started_at"]
    assert kept == ["model_quality", "embedding_jobs", "serving", "demo"]


def test_the_page_opens_on_the_targets_beside_the_plots_and_wide_tables_scroll(tmp_path):
    results_path = tmp_path / "results.json"
    results_path.write_text(json.dumps(_results()))
    page = report.write_report(results_path, tmp_path / "report.html").read_text()
    overview = page.index('<div class="overview">')
    assert (
        overview
        < page.index("<h2>Targets")
        < page.index('<section class="plots">')
        < page.index("<img")
        < page.index('id="figures"')
    )
    assert page.index('id="figures"') < page.index('id="provenance"') < page.index('id="benchmarks"')
    assert '<div class="scroll"><table><tr><th>dataset</th>' in page  # the 16-column quality table scrolls in its box
    assert "overflow-wrap: anywhere" in page and "@media (max-width: 1100px)" in page


def test_ebr_report_writes_to_var_unless_told_otherwise():
    from cli.main import build_parser
    from cli.report_commands import BENCHMARKS_DIR

    args = build_parser().parse_args(["report"])
    assert args.out == BENCHMARKS_DIR.parent / "var" / "report.html"
    assert report.DEFAULT_OUT == args.out  # python benchmarks/report.py too; run_all passes benchmarks/report.html


def test_ebr_report_without_the_checkouts_benchmarks_says_what_it_needs(tmp_path, monkeypatch, capsys):
    from cli import report_commands
    from cli.main import main

    monkeypatch.setattr(report_commands, "BENCHMARKS_DIR", tmp_path / "benchmarks")
    results_path = tmp_path / "results.json"
    results_path.write_text(json.dumps(_results()))
    assert main(["report", "--results", str(results_path), "--out", str(tmp_path / "page.html")]) == 1
    err = capsys.readouterr().err
    assert "report.py is missing" in err and "checkout" in err and "wheel" in err
    assert not (tmp_path / "page.html").exists()


def test_the_benchmarks_do_not_import_the_cli():
    """The CLI imports benchmarks.report; nothing in benchmarks/ imports the CLI (no cycle)."""
    import ast

    offenders = []
    for path in sorted((Path(__file__).resolve().parents[1] / "benchmarks").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{path.name}: {n}" for n in names if n == "cli" or n.startswith("cli.")]
    assert offenders == []


def test_a_script_run_by_path_imports_its_siblings_as_the_benchmarks_package(tmp_path):
    import subprocess
    import sys

    results_path = tmp_path / "results.json"
    results_path.write_text(json.dumps(_results()))
    repo = Path(__file__).resolve().parents[1]
    out = tmp_path / "page.html"
    proc = subprocess.run(
        [sys.executable, str(repo / "benchmarks" / "report.py"), "--results", str(results_path), "--out", str(out)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Targets: 8 of 13 met" in out.read_text()


def test_the_scripts_own_summaries_judge_as_the_table_of_targets():
    """index_build.py's and serving.py's `targets` call benchmarks/targets.py, so they agree
    with run_all's table, including the cases where they used to differ (edges worked out
    by hand below)."""
    from benchmarks import index_build, serving

    results = _results()
    ib = results["benchmarks"]["index_build"]["results"]
    exact = ib["exact"]["qps_single_query"]
    for row in ib["hnswlib"]["sweep"]:
        row["speedup_vs_exact"] = round(row["qps"] / exact, 1)
    own = index_build.targets(ib)
    assert own["recall_0.99_at_50x_met"] is _target(results, "0.99 at >= 50x")["met"] is True
    assert own["incremental_20x_met"] is _target(results, "incremental")["met"] is True
    assert own["recall_0.99_fastest_ef"] == 50 and own["query_set"] == "held-out"
    # 4,996 QPS over 100 = 49.96x, shown rounded as 50.0x: not met (the verdict is on the
    # measurement; index_build.py used to judge the rounded figure).
    ib["hnswlib"]["sweep"] = [
        {"query_set": "held-out", "ef": 50, "recall_at_10": 0.991, "qps": 4996.0, "speedup_vs_exact": 50.0}
    ]
    assert index_build.targets(ib)["recall_0.99_at_50x_met"] is False
    assert _target({"targets": evaluate_targets(results["benchmarks"])}, "0.99 at >= 50x")["met"] is False

    sv = results["benchmarks"]["serving"]["results"]
    raw = sv["raw_hnswlib_single_thread"]
    mode = sv["searchers"]["process"]
    own = serving.targets(mode, raw)
    table = [t for t in evaluate_targets(results["benchmarks"]) if t["issue"] == 6]
    assert [own[k]["met"] for k in own] == [t["met"] for t in table] == [True, False, False, True]
    # A reload phase in which the new version was never served (window_seconds None) does
    # not meet the reload target even with a low p99 (serving.py used to count it as met).
    mode["reload_fixed_rate"]["reload_window"]["p99_ms"] = 9.0
    assert serving.targets(mode, raw)["reload_p99_le_2x_steady"]["met"] is True
    mode["reload_fixed_rate"]["window_seconds"] = None
    assert serving.targets(mode, raw)["reload_p99_le_2x_steady"]["met"] is False
    assert _target({"targets": evaluate_targets(results["benchmarks"])}, "during a reload")["met"] is False
    # An offered rate under 1,000/s does not meet "at >= 1,000 requests/s" (serving.py and
    # router.py used to look at the achieved rate only).
    mode["steady_fixed_rate"]["offered_rate"] = 500.0
    assert serving.targets(mode, raw)["p99_le_10ms_at_1000qps"]["met"] is False
    assert _target({"targets": evaluate_targets(results["benchmarks"])}, "p99 <= 10 ms")["met"] is False
