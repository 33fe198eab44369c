"""The headline figures of a benchmark run, and what run_all extracts beyond the scripts' JSON.

  * summary_figures: one row per headline figure of every benchmark that ran
    ({area, measurement, value, unit, text, size}), the "Figures" table of
    results.md and of the HTML report;
  * serving_latency_extract: the serving benchmark's per-request latencies, reduced
    to quantiles and a reload timeline for the plots (run_all calls it right after
    that benchmark, while its --workdir still holds the arrays);
  * model_versions: the version names the figures came from.

Whether a figure meets its issue's target is not decided here: targets.py.
"""

from __future__ import annotations

from pathlib import Path

from benchmarks.shapes import fastest_at_recall, results_of, serving_modes, sweep_sets


def serving_latency_extract(workdir: Path, results: dict) -> dict | None:
    """Per-request latencies of the steady and reload phases, reduced for plotting.

    benchmarks/serving.py keeps its load generator's per-request arrays (start, latency,
    status, version) in --workdir as loadgen-rate-2.npz (steady) and loadgen-rate-3.npz
    (reload), overwritten by each searcher mode in turn, so they hold the last mode's;
    its JSON has percentiles only. This reduces them to quantiles (for CDFs) and, for the
    reload phase, 100 ms bins over time with the publish and swap times. None if the
    files are not there or match no mode of the JSON: the plots then use percentiles.
    """
    import numpy as np

    files = {"steady": workdir / "loadgen-rate-2.npz", "reload": workdir / "loadgen-rate-3.npz"}
    if not all(p.is_file() for p in files.values()):
        return None
    reload_data = np.load(files["reload"])
    names = [str(n) for n in reload_data["names"]]
    # Which mode's arrays these are: the one whose post-reload version the answers name.
    mode, reload_cfg = next(
        (
            (m, v["reload_fixed_rate"])
            for m, v in serving_modes(results).items()
            if v["reload_fixed_rate"].get("served_after") in names
        ),
        (None, None),
    )
    if mode is None:
        return None
    probs = quantile_grid()
    extract: dict = {
        "source": "per-request latencies of benchmarks/serving.py's load generator (its --workdir)",
        "searcher": mode,
        "probabilities": probs,
        "phases": {},
    }
    for phase, path in files.items():
        data = np.load(path)
        extract["phases"][phase] = _latency_quantiles(data["latency"] * 1000.0, data["status"], probs)
    start, ms, status = reload_data["start"], reload_data["latency"] * 1000.0, reload_data["status"]
    t0 = float(start.min())
    swapped_at = float(start[reload_data["version"] == names.index(reload_cfg["served_after"])].min()) - t0
    window_s = reload_cfg.get("window_seconds")
    published_at = swapped_at - window_s if window_s is not None else None
    if published_at is not None:
        # The script's reload window: from the pointer move to 1 s after the first answer
        # from the new version (publish time = swap - window_seconds).
        rel = start - t0
        in_window = (rel >= published_at) & (rel <= swapped_at + 1.0)
        if in_window.any():
            extract["phases"]["reload_window"] = _latency_quantiles(ms[in_window], status[in_window], probs)
    bins = np.floor((start - t0) / 0.1).astype(int)
    series = []
    for b in np.unique(bins):
        chunk = ms[bins == b]
        series.append(
            [
                round(b * 0.1, 1),
                round(float(np.percentile(chunk, 50)), 3),
                round(float(np.percentile(chunk, 99)), 3),
                round(float(chunk.max()), 3),
                int(len(chunk)),
            ]
        )
    extract["reload_timeline"] = {
        "columns": ["t_seconds", "p50_ms", "p99_ms", "max_ms", "requests"],
        "bin_seconds": 0.1,
        "rows": series,
        "published_at_seconds": round(published_at, 2) if published_at is not None else None,
        "swapped_at_seconds": round(swapped_at, 2),
    }
    return extract


def _latency_quantiles(ms, status, probs: list[float]) -> dict:
    import numpy as np

    return {
        "requests": int(len(ms)),
        "failed": int((status != 200).sum()),
        "quantiles_ms": [round(float(x), 3) for x in np.quantile(ms, probs)],
    }


def quantile_grid() -> list[float]:
    """Probabilities for a latency CDF, dense in the tail: 0..0.9 by 0.01, then to 0.9999."""
    body = [round(i / 100, 2) for i in range(0, 90)]
    tail = [round(0.9 + i / 1000, 3) for i in range(0, 100)]
    return body + tail + [0.9995, 0.9999, 1.0]


def _query_set_label(query_set) -> str:
    return "" if query_set is None else f", {query_set} queries"


def _figures_model_quality(mq: dict, add) -> None:
    shown = [r for r in mq["rows"] if not r.get("seed_run")]
    for r in shown:
        if "examples_per_second" in r:
            add(
                "training",
                f"{r['scorer']} ({_short_dataset(r['dataset'])})",
                r["examples_per_second"],
                "examples/s",
                f"{r['examples_per_second']:,.0f} examples/s (best epoch {r['best_epoch']} of {r['epochs_run']})",
                r["dataset"],
            )
    for r in shown:
        m = r["metrics"]
        parts = [
            f"{k} {m[k]:.3f}"
            for k in (
                "top_k_accuracy@100",
                "recall@10",
                "recall@100",
                "recall@500",
                "ndcg@10",
                "cold_recall@100",
                "language_match@10",
            )
            if k in m
        ]
        if "eval_users" in m:
            parts.append(f"{int(m['eval_users']):,} test users / {int(m.get('eval_positives', 0)):,} positives")
        add(
            "quality",
            f"{r['scorer']} ({_short_dataset(r['dataset'])})",
            m.get("recall@100"),
            "recall@100",
            ", ".join(parts),
            r["dataset"],
        )


def _figures_embedding_jobs(ej: dict, add) -> None:
    for r in ej["rows"]:
        size = f"{r['rows']:,} {r['job'].split('_')[0]}"
        if "ratio_job_over_raw" in r:
            plain = (
                f"; the same work without Beam (read, features, tower) {r['plain_loop_median_per_s']:,.0f}/s, job/that "
                f"{r['ratio_job_over_plain_loop']:.2f}"
                if "plain_loop_median_per_s" in r
                else ""
            )
            add(
                "Beam jobs",
                f"{r['job']}: job vs raw tower",
                r["ratio_job_over_raw"],
                "job/raw",
                f"job {r['job_median_per_s']:,.0f}/s vs raw tower {r['raw_tower_median_per_s']:,.0f}/s: ratio {r['ratio_job_over_raw']:.2f}{plain} "
                f"({r['job_median_seconds']} s wall; 2-process DirectRunner {r['multi_process_2_workers_seconds']} s)",
                size,
            )
        else:
            add(
                "Beam jobs",
                f"{r['job']}: wall time",
                r["job_seconds"],
                "s",
                f"{r['job_seconds']} s ({r['job_per_s']:,.0f}/s)",
                size,
            )


def _figures_index_build(ib: dict, add) -> None:
    size = f"{ib['data']['n']:,} x {ib['data']['dim']} clustered, M={ib['params']['M']}, ef_construction={ib['params']['ef_construction']}"
    exact = ib["exact"]["qps_single_query"]
    add("index", "exact numpy search, 1 thread, 1 query", exact, "QPS", f"{exact:,.0f} QPS", size)
    for lib in ("hnswlib", "faiss"):
        if lib not in ib:
            continue
        b = ib[lib]["build"]
        add(
            "index",
            f"{lib} build ({ib['params']['build_threads']} threads)",
            b["vectors_per_second"],
            "vectors/s",
            f"{b['vectors_per_second']:,.0f} vectors/s, {b['bytes_per_vector']:,.0f} bytes/vector",
            size,
        )
        for query_set, rows in sweep_sets(ib[lib]["sweep"]).items():
            best = fastest_at_recall(rows, 0.99)
            text = (
                f"ef={best['ef']}: recall@10 {best['recall_at_10']:.4f}, {best['qps']:,.0f} QPS ({best['qps'] / exact:.1f}x exact)"
                if best
                else "no ef of the sweep reaches 0.99"
            )
            add(
                "index",
                f"{lib} at recall@10 >= 0.99{_query_set_label(query_set)}",
                best["qps"] if best else None,
                "QPS",
                text,
                size,
            )
    inc = ib["incremental"]
    add(
        "index",
        f"incremental update ({inc['fraction']:.0%} turnover) vs full rebuild",
        inc["speedup"],
        "x",
        f"{inc['incremental_seconds']} s vs {inc['full_rebuild_seconds']} s: {inc['speedup']}x",
        size,
    )


def _figures_serving(sv: dict, add) -> None:
    d = sv["data"]
    size = f"{d['stories']:,} stories x {d['dim']}, {d['users']:,} users, concurrency {d['concurrency']}"
    raw = sv["raw_hnswlib_single_thread"]
    add(
        "serving",
        "raw hnswlib, 1 thread, 1 query",
        raw["qps"],
        "QPS",
        f"{raw['qps']:,.0f} QPS, p50 {raw['p50_ms']} ms, p99 {raw['p99_ms']} ms",
        size,
    )
    mib = 2**20
    for mode, s in serving_modes(sv).items():
        label = f"served ({mode} searcher)" if mode != "default" else "served"
        sat = s["saturation_closed_loop"]
        add(
            "serving",
            f"{label}, closed loop (saturation)",
            sat["qps"],
            "QPS",
            f"{sat['qps']:,.0f} QPS, p50 {sat['p50_ms']} ms, p99 {sat['p99_ms']} ms",
            size,
        )
        st = s["steady_fixed_rate"]
        add(
            "serving",
            f"{label}, fixed {st['offered_rate']:.0f} req/s (steady)",
            st["p99_ms"],
            "ms p99",
            f"{st['qps']:,.0f} req/s, p50 {st['p50_ms']} ms, p99 {st['p99_ms']} ms, {st['failed']} failed",
            size,
        )
        rl = s["reload_fixed_rate"]
        win = rl.get("reload_window") or {}
        add(
            "serving",
            f"{label}, during a hot reload ({rl.get('window_seconds')} s window)",
            win.get("p99_ms"),
            "ms p99",
            f"p50 {win.get('p50_ms')} ms, p99 {win.get('p99_ms')} ms, {rl['whole_phase'].get('failed')} failed in the phase; "
            f"server reload {_round(rl.get('server_reload_seconds'), 2)} s",
            size,
        )
        mem = s.get("memory") or sv.get("memory") or {}
        rss = [mem.get(k) for k in ("server_tree_rss_loaded", "server_rss_loaded")]
        peak = [mem.get(k) for k in ("server_tree_rss_peak_during_reload", "server_rss_peak_during_reload")]
        rss, peak = next((x for x in rss if x), None), next((x for x in peak if x), None)
        text = f"{mem['loaded_index_memory_bytes'] / mib:,.0f} MiB (LoadedIndex.memory_bytes)"
        if mem.get("index_process_rss_bytes"):
            text += f"; index process RSS {mem['index_process_rss_bytes'] / mib:,.0f} MiB"
        if rss and peak:
            text += f"; server RSS {rss / mib:,.0f} MiB loaded, {peak / mib:,.0f} MiB peak during the reload"
        add("serving", f"{label}, memory per loaded version", mem["loaded_index_memory_bytes"], "bytes", text, size)


def _figures_demo(record: dict, add) -> None:
    if record["ok"]:
        add(
            "end to end",
            "`make demo`",
            record["wall_seconds"],
            "s",
            f"{record['wall_seconds']:.0f} s wall",
            "DEMO_SIZE default (Makefile)",
        )
    else:
        add(
            "end to end",
            "`make demo`",
            None,
            "s",
            f"failed after {record['wall_seconds']:.0f} s: {record['error']}",
            "",
        )


FIGURES = {
    "model_quality": _figures_model_quality,
    "embedding_jobs": _figures_embedding_jobs,
    "index_build": _figures_index_build,
    "serving": _figures_serving,
}


def summary_figures(benchmarks: dict[str, dict]) -> list[dict]:
    """The headline figures of every benchmark that ran: [{area, measurement, value, unit, text, size}].

    A benchmark whose JSON cannot be read (its format changed) gives one row saying so,
    and the others are still summarised.
    """
    rows: list[dict] = []

    def add(area: str, measurement: str, value, unit: str, text: str, size: str) -> None:
        rows.append(
            {"area": area, "measurement": measurement, "value": value, "unit": unit, "text": text, "size": size}
        )

    for name, figures in FIGURES.items():
        results = results_of(benchmarks, name)
        if results:
            try:
                figures(results, add)
            except (KeyError, TypeError, ValueError, IndexError) as exc:
                add(name, "(unreadable)", None, "", f"could not read {name}.json: {type(exc).__name__}: {exc}", "")
    demo = benchmarks.get("demo")
    if demo is not None and not demo.get("skipped"):
        _figures_demo(demo, add)
    return rows


def model_versions(benchmarks: dict[str, dict]) -> dict:
    """Version names the results carry (the indexes the serving benchmark served)."""
    versions = {}
    sv = results_of(benchmarks, "serving")
    if sv:
        try:
            versions["serving: index built and served first"] = sv["index"]["version"]
            for mode, s in serving_modes(sv).items():
                versions[f"serving ({mode}): index served after the reload"] = s["reload_fixed_rate"].get(
                    "served_after"
                )
        except (KeyError, TypeError):
            pass
    demo = benchmarks.get("demo") or {}
    if demo.get("ok"):
        versions.update(demo_versions(demo.get("output_tail", "")))
    return versions


def demo_versions(output: str) -> dict[str, str]:
    """What the demo's service said it served: `model VERSION, ...` and `KIND  VERSION  since ...` lines."""
    import re

    found = {}
    for line in output.splitlines():
        if m := re.match(r"model (\S+), dim", line):
            found["demo: model"] = m.group(1)
        elif m := re.match(r"((?:embeddings|indexes)/\w+)\s+(\S+)\s+\d{4}-", line):
            found[f"demo: {m.group(1)}"] = m.group(2)
    return found


def _short_dataset(dataset: str) -> str:
    return dataset.split(" (")[0]


def _round(value, digits: int):
    return round(value, digits) if isinstance(value, (int, float)) else value
