"""benchmarks/runner.py and run_all.py's driver: a benchmark run as a subprocess (failing,
hung, writing its JSON), --resummarize and an --only run's merge with the previous results."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks import run_all
from benchmarks.runner import Benchmark, run_benchmark
from tests.bench_results import find_target, hand_made_results


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
    results = hand_made_results()
    index_json = tmp_path / "index_build.json"
    index_data = results["benchmarks"]["index_build"]["results"]
    index_data = {**index_data, "incremental": {**index_data["incremental"], "speedup": 12.0}}  # on disk: 12x, not 25x
    index_json.write_text(json.dumps(index_data))
    results["benchmarks"]["index_build"]["json"] = str(index_json)
    results_path = tmp_path / "results.json"
    results_path.write_text(json.dumps(results))
    redone = run_all.resummarize(results_path, plots=False, notes=["other engineers' jobs ran meanwhile"])
    assert find_target(redone, "incremental")["met"] is False
    assert json.loads(results_path.read_text())["targets"] == redone["targets"]
    assert "| #5 | incremental update" in (tmp_path / "results.md").read_text()
    assert redone["notes"][-2:][0] == "other engineers' jobs ran meanwhile"
    assert redone["notes"][-1].startswith("figures re-summarised")


def test_an_only_run_keeps_the_other_benchmarks_from_the_previous_results():
    previous = hand_made_results()
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
