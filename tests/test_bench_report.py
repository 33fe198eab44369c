"""The benchmark figures, targets, plots, Markdown and HTML report, and `ebr report`, on the
small hand-made results of tests/bench_results.py (its docstring works the figures out)."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import numpy as np
import pytest

from benchmarks import plots, report
from benchmarks.figures import serving_latency_extract, summary_figures
from benchmarks.targets import evaluate_targets
from tests.bench_results import find_target, hand_made_results

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_targets_are_computed_from_the_figures():
    results = hand_made_results()
    recall = find_target(results, "recall@10 >= 0.99 at >= 50x")
    assert recall["met"] is True and "ef=50" in recall["measured"] and "60.0x" in recall["measured"]
    assert "held-out" in recall["note"]
    assert recall["at_target_size"] is False  # 200,000 < 1,000,000
    assert find_target(results, "incremental")["met"] is True
    assert find_target(results, "p99 <= 10 ms")["met"] is True
    assert find_target(results, "p99 <= 10 ms")["target"].endswith("[searcher: process]")
    served = find_target(results, "30% of raw")
    assert served["met"] is False and served["measured"].startswith("0.29")
    reload = find_target(results, "during a reload")
    assert reload["met"] is False and "2.12x" in reload["measured"]
    assert find_target(results, "zero failed")["met"] is True
    assert find_target(results, "stories_embeddings: embeddings/s")["met"] is True  # 0.5 is enough
    assert find_target(results, "stories_embeddings: embeddings/s")["at_target_size"] is True
    assert find_target(results, "users_embeddings: embeddings/s")["met"] is False
    # Issue 15's replacement: the story job against the same work without Beam, at 1M stories.
    without_beam = find_target(results, "stories_embeddings: DirectRunner >= 0.5 x the same work without Beam")
    assert without_beam["met"] is True and without_beam["measured"].startswith("0.83")
    assert without_beam["at_target_size"] is False  # 200,000 < 1,000,000
    assert find_target(results, "top-100 accuracy >= 0.40")["met"] is True
    assert find_target(results, "seen-excluded recall@100 >= the best baseline")["met"] is False  # 0.60 vs ALS 0.69
    # ML-100K time split: recall@100 0.40 < EASE's 0.41, a tie within the interval, but the
    # target asks for >= on every depth.
    time_split = find_target(results, "ml-100k time split")
    assert time_split["met"] is False and "recall@100 0.400 vs ease 0.410" in time_split["measured"]
    assert find_target(results, "ahead of recent popularity and ALS")["met"] is True
    assert find_target(results, "language match@10")["met"] is True


def test_no_ef_reaching_the_recall_fails_the_target_and_a_failed_benchmark_is_not_measured():
    results = hand_made_results()
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
    text = report.markdown(hand_made_results())
    assert "| #5 | hnswlib recall@10 >= 0.99" in text
    assert "| **no** |" in text and "| yes |" in text
    assert "6,000 QPS (60.0x exact)" in text
    assert "`make -o .venv/.ebr-installed demo`" in text
    assert "Commit `0123456789ab`" in text


def test_every_plot_is_a_valid_png(tmp_path):
    import matplotlib.image

    written = plots.write_all(hand_made_results(), tmp_path)
    assert set(written) == {"training_history", "recall_at_k", "recall_qps", "serving_latency", "embedding_throughput"}
    for path in written.values():
        assert path.read_bytes()[:8] == PNG_SIGNATURE
        height, width, _ = matplotlib.image.imread(path).shape
        assert width > 600 and height > 300


def test_latency_plot_falls_back_to_percentiles_and_missing_benchmarks_are_skipped(tmp_path):
    results = hand_made_results(with_latency=False)
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
    results = hand_made_results()
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
    results_path.write_text(json.dumps(hand_made_results()))
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
    assert "Targets: 9 of 14 met" in page
    assert "6,000 QPS (60.0x exact)" in page
    assert 'class="notmet"' in page and "the machine was shared" in page
    assert "<script" not in page and 'src="http' not in page  # self-contained


def test_ebr_report_through_the_cli(tmp_path, capsys):
    from cli.main import main

    results_path = tmp_path / "results.json"
    results_path.write_text(json.dumps(hand_made_results()))
    out = tmp_path / "page.html"
    assert main(["report", "--results", str(results_path), "--out", str(out)]) == 0
    assert out.read_text().startswith("<!DOCTYPE html>")
    assert "9 of 14 targets met" in capsys.readouterr().out
    assert main(["report", "--results", str(tmp_path / "none.json")]) == 1
    assert "make bench" in capsys.readouterr().err


def test_the_page_opens_on_the_targets_beside_the_plots_and_wide_tables_scroll(tmp_path):
    results_path = tmp_path / "results.json"
    results_path.write_text(json.dumps(hand_made_results()))
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
    results_path.write_text(json.dumps(hand_made_results()))
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
    results_path.write_text(json.dumps(hand_made_results()))
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
    assert "Targets: 9 of 14 met" in out.read_text()


def test_the_scripts_own_summaries_judge_as_the_table_of_targets():
    """index_build.py's and serving.py's `targets` call benchmarks/targets.py, so they agree
    with run_all's table, including the cases where they used to differ (edges worked out
    by hand below)."""
    from benchmarks import index_build, serving

    results = hand_made_results()
    ib = results["benchmarks"]["index_build"]["results"]
    exact = ib["exact"]["qps_single_query"]
    for row in ib["hnswlib"]["sweep"]:
        row["speedup_vs_exact"] = round(row["qps"] / exact, 1)
    own = index_build.targets(ib)
    assert own["recall_0.99_at_50x_met"] is find_target(results, "0.99 at >= 50x")["met"] is True
    assert own["incremental_20x_met"] is find_target(results, "incremental")["met"] is True
    assert own["recall_0.99_fastest_ef"] == 50 and own["query_set"] == "held-out"
    # 4,996 QPS over 100 = 49.96x, shown rounded as 50.0x: not met (the verdict is on the
    # measurement; index_build.py used to judge the rounded figure).
    ib["hnswlib"]["sweep"] = [
        {"query_set": "held-out", "ef": 50, "recall_at_10": 0.991, "qps": 4996.0, "speedup_vs_exact": 50.0}
    ]
    assert index_build.targets(ib)["recall_0.99_at_50x_met"] is False
    assert find_target({"targets": evaluate_targets(results["benchmarks"])}, "0.99 at >= 50x")["met"] is False

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
    assert find_target({"targets": evaluate_targets(results["benchmarks"])}, "during a reload")["met"] is False
    # An offered rate under 1,000/s does not meet "at >= 1,000 requests/s" (serving.py and
    # router.py used to look at the achieved rate only).
    mode["steady_fixed_rate"]["offered_rate"] = 500.0
    assert serving.targets(mode, raw)["p99_le_10ms_at_1000qps"]["met"] is False
    assert find_target({"targets": evaluate_targets(results["benchmarks"])}, "p99 <= 10 ms")["met"] is False


def test_the_router_targets_of_issue_14():
    from benchmarks.targets import merged_recall_met, router_qps_met, swaps_met

    assert merged_recall_met(0.962, 0.966)  # 0.004 under the unsharded recall: within 0.005
    assert not merged_recall_met(0.960, 0.966)  # 0.006 under
    assert merged_recall_met(0.990, 0.966)  # above it by any margin
    assert router_qps_met(0.5) and not router_qps_met(0.49)
    assert swaps_met(0, 5) and not swaps_met(0, 4) and not swaps_met(1, 5)
