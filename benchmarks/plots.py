"""Plots of a benchmark run (benchmarks/results.json), as PNG files.

    python benchmarks/plots.py [--results benchmarks/results.json] [--out-dir benchmarks/figures]

One function per figure, each taking the combined results (what benchmarks/run_all.py
writes) and a path, returning the path or None when the run lacks that benchmark:

  * training_history: training loss and the validation metric over epochs, per model;
  * recall_at_k: recall@K of the model against popularity and implicit ALS, per dataset;
  * recall_qps: hnswlib's ef sweep against faiss HNSW and exact numpy search;
  * serving_latency: latency CDFs steady vs during a hot reload, and the reload over time;
  * embedding_throughput: Beam jobs against the raw tower loop.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on a server or in CI
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter, MaxNLocator  # noqa: E402

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
# As a script, benchmarks/ is sys.path[0]: the checkout replaces it (benchmarks/__init__.py).
sys.path[:] = [str(REPO), *(p for p in sys.path if Path(p or ".").resolve() not in (REPO, REPO / "benchmarks"))]

from benchmarks.shapes import serving_modes, sweep_sets  # noqa: E402

DPI = 110
COLORS = {
    "model": "#1f77b4",
    "popularity": "#7f7f7f",
    "als": "#ff7f0e",
    "other": "#2ca02c",
    "faiss": "#d62728",
    "exact": "black",
}


def write_all(results: dict, out_dir: Path) -> dict[str, Path]:
    """Every plot the run has data for, into OUT_DIR; {name: path}.

    A plot that fails is reported on stderr and left out: one broken figure must not
    lose the others.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, plot in PLOTS.items():
        try:
            path = plot(results, out_dir / f"{name}.png")
        except Exception as exc:  # noqa: BLE001 - report and go on with the others
            print(f"plot {name} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
            continue
        if path is not None:
            written[name] = path
    return written


def _bench(results: dict, name: str) -> dict | None:
    record = results.get("benchmarks", {}).get(name) or {}
    return record.get("results")


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def _scorer_color(scorer: str) -> str:
    if scorer.startswith("popularity"):
        return COLORS["popularity"]
    if "ALS" in scorer:
        return COLORS["als"]
    if "softmax" in scorer or "in-batch" in scorer or scorer.startswith("two-tower (default)"):
        return COLORS["model"]
    return COLORS["other"]


def _eval_size(rows: list[dict]) -> str:
    m = rows[0]["metrics"]
    if "eval_users" in m:
        return f"{int(m['eval_users']):,} test users, {int(m.get('eval_events', 0)):,} test events"
    return ""


def _by_dataset(rows: list[dict]) -> dict[str, list[dict]]:
    grouped: dict[str, list[dict]] = {}
    for r in rows:
        grouped.setdefault(r["dataset"], []).append(r)
    return grouped


# -- model quality ------------------------------------------------------------------------


def training_history(results: dict, path: Path) -> Path | None:
    """Per trained model: loss (top) and every validation metric (bottom) per epoch."""
    mq = _bench(results, "model_quality")
    models = [r for r in (mq or {}).get("rows", []) if r.get("validation") and not r.get("seed_run")]
    if not models:
        return None
    fig, axes = plt.subplots(2, len(models), figsize=(4.2 * len(models), 7), squeeze=False)
    for col, r in enumerate(models):
        history = r["validation"]
        epochs = [h["epoch"] for h in history]
        best = r.get("best_epoch")
        best = best[0] if isinstance(best, list) else best  # a seed-median row: its history is the first seed's
        loss_ax, val_ax = axes[0][col], axes[1][col]
        loss_ax.plot(
            epochs, [h["loss"] for h in history], "o-", color=_scorer_color(r["scorer"]), label="training loss"
        )
        loss_ax.set_title(f"{r['scorer']}\n{r['dataset']}", fontsize=9)
        loss_ax.set_xlabel("epoch")
        loss_ax.set_ylabel("training loss (mean per example)")
        val_keys = [k for k in history[0] if k.startswith("val_")]
        for key in val_keys:
            val_ax.plot(epochs, [h[key] for h in history], "o-", label=key.removeprefix("val_").replace("_", " "))
        val_ax.set_xlabel("epoch")
        val_ax.set_ylabel("validation metric (fraction)")
        val_ax.set_ylim(0, max(0.05, 1.15 * max(h[k] for h in history for k in val_keys)) if val_keys else None)
        for ax in (loss_ax, val_ax):
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            if best is not None:
                ax.axvline(best, color="grey", linestyle="--", linewidth=1, label=f"chosen epoch ({best})")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        loss_ax.text(
            0.02,
            0.02,
            f"{r['examples_per_second']:,.0f} training examples/s",
            transform=loss_ax.transAxes,
            fontsize=8,
            color="dimgrey",
        )
    fig.suptitle(
        "Two-tower training: loss and validation top-100 accuracy per epoch (epoch chosen on validation)", fontsize=12
    )
    return _save(fig, path)


def recall_at_k(results: dict, path: Path) -> Path | None:
    """recall@K (seen items excluded) of every scorer, one panel per dataset."""
    mq = _bench(results, "model_quality")
    if not mq or not mq.get("rows"):
        return None
    datasets = _by_dataset([r for r in mq["rows"] if not r.get("seed_run")])
    fig, axes = plt.subplots(1, len(datasets), figsize=(6.2 * len(datasets), 4.8), squeeze=False)
    for ax, (dataset, rows) in zip(axes[0], datasets.items(), strict=True):
        for r in rows:
            ks = sorted(int(k.split("@")[1]) for k in r["metrics"] if k.startswith("recall@"))
            style = "o-" if r["scorer"].startswith("two-tower") else "s--"
            ax.plot(
                ks,
                [r["metrics"][f"recall@{k}"] for k in ks],
                style,
                color=_scorer_color(r["scorer"]),
                label=r["scorer"],
            )
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
        ax.set_xticks(ks)
        ax.set_xlabel("K (retrieved stories, log scale)")
        ax.set_ylabel("recall@K (seen items excluded)")
        ax.set_ylim(0, 1)
        ax.set_title(f"{dataset}\n{_eval_size(rows)}", fontsize=10)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8, loc="upper left")
    fig.suptitle("Recall@K: two-tower model against popularity and implicit ALS (same split, same run)", fontsize=12)
    return _save(fig, path)


# -- index --------------------------------------------------------------------------------


def recall_qps(results: dict, path: Path) -> Path | None:
    """QPS (log) against recall@10 for each ef: hnswlib, faiss HNSW, and exact search.

    One line per library and query set (held-out points of the same distribution, which
    decide the target, then stored vectors + noise of a given norm, harder stress sets).
    Two panels: the whole sweep, and the high-recall corner around the 0.99 target, where
    every ef of the deciding set lies within a few thousandths and one panel's labels
    overlapped; there hnswlib's ef labels sit left of its points and faiss' right of
    theirs, the whole-sweep panel labels only the ef values outside that corner.
    """
    ib = _bench(results, "index_build")
    if not ib:
        return None
    exact = ib["exact"]["qps_single_query"]
    fig, (whole, corner) = plt.subplots(1, 2, figsize=(13, 6.2), sharey=True, gridspec_kw={"width_ratios": [1, 1.15]})
    corner_from = 0.97
    for ax, zoomed in ((whole, False), (corner, True)):
        _draw_sweeps(
            ax, ib, exact, label_ef=lambda r, z=zoomed: (r["recall_at_10"] >= corner_from) == z, legend=not zoomed
        )
        ax.axhline(50 * exact, color="green", linestyle="--", linewidth=1, label="target: 50x exact QPS")
        ax.axvline(0.99, color="green", linestyle=":", linewidth=1, label="target: recall@10 0.99")
        ax.set_yscale("log")
        ax.grid(alpha=0.3, which="both")
        ax.set_xlabel("recall@10 against exact search (each query set)")
    corner.set_xlim(corner_from, 1.0015)
    corner.set_title(f"the corner: recall@10 >= {corner_from}", fontsize=10)
    whole.set_ylabel("queries per second (1 thread, 1 query at a time, log scale)")
    d, p = ib["data"], ib["params"]
    queries = d.get("queries_per_set", d.get("queries"))
    whole.set_title(
        f"{d['n']:,} x {d['dim']} clustered vectors, M={p['M']}, ef_construction={p['ef_construction']}, "
        f"{queries:,} queries per set",
        fontsize=10,
    )
    fig.suptitle("Recall vs speed for each ef", fontsize=11)
    whole.legend(fontsize=7.5, loc="lower left")
    return _save(fig, path)


def _draw_sweeps(ax, ib: dict, exact: float, label_ef, legend: bool) -> None:
    """Every library's sweep lines on AX; ef labels on the deciding set's points where `label_ef(row)`."""
    styles = ["-", "--", ":", "-."]
    for lib, color, marker in (("hnswlib", COLORS["model"], "o"), ("faiss", COLORS["faiss"], "s")):
        if lib not in ib:
            continue
        b = ib[lib]["build"]
        for i, (query_set, rows) in enumerate(sweep_sets(ib[lib]["sweep"]).items()):
            rows = sorted(rows, key=lambda r: r["ef"])
            label = f"{lib} HNSW" + (f", {query_set} queries" if query_set is not None else "")
            if i == 0:
                label += f" (build {b['vectors_per_second']:,.0f} vectors/s, {b['bytes_per_vector']:,.0f} B/vector)"
            ax.plot(
                [r["recall_at_10"] for r in rows],
                [r["qps"] for r in rows],
                marker + styles[i % len(styles)],
                color=color,
                alpha=1.0 if i == 0 else 0.4,
                markersize=6 if i == 0 else 4,
                label=label if legend else None,
            )
            if i == 0:  # the deciding query set: hnswlib's labels to the left, faiss' to the right
                left = lib == "hnswlib"
                for r in (r for r in rows if label_ef(r)):
                    ax.annotate(
                        f"ef={r['ef']}",
                        (r["recall_at_10"], r["qps"]),
                        textcoords="offset points",
                        fontsize=8,
                        color=color,
                        xytext=(-7, 0) if left else (7, 0),
                        ha="right" if left else "left",
                        va="center",
                        bbox={"boxstyle": "round,pad=0.1", "fc": "white", "ec": "none", "alpha": 0.75},
                    )
    ax.plot(
        [1.0],
        [exact],
        "*",
        color=COLORS["exact"],
        markersize=14,
        label=f"exact numpy search ({exact:,.0f} QPS)" if legend else None,
    )


# -- serving ------------------------------------------------------------------------------


def serving_latency(results: dict, path: Path) -> Path | None:
    """Latency CDF steady vs during a reload (left); the reload phase over time (right).

    Full CDFs from the per-request quantiles run_all extracted (one searcher mode: the
    load generator's files hold the last mode's requests); the percentiles in
    serving.json, drawn as step CDFs (p50, p99, p99.9, max), for the other modes or
    when there is no extract.
    """
    sv = _bench(results, "serving")
    if not sv:
        return None
    extract = results["benchmarks"]["serving"].get("latency") or None
    modes = serving_modes(sv)
    d = sv["data"]
    rate = next(iter(modes.values()))["steady_fixed_rate"]["offered_rate"]
    fig, (cdf_ax, time_ax) = plt.subplots(1, 2, figsize=(14.5, 6.6), gridspec_kw={"width_ratios": [1.15, 1]})
    phase_colors = {"steady": COLORS["model"], "reload": COLORS["faiss"], "reload_window": "purple"}
    phase_labels = {
        "steady": "steady",
        "reload": "whole reload phase",
        "reload_window": "reload window (publish to swap + 1 s)",
    }
    extract_mode = (extract or {}).get("searcher")
    # A logit y axis spreads the tail (p99, p99.9) the targets are about; 0 and 1 have no place on it.
    if extract:
        probs = extract["probabilities"]
        inside = [i for i, p in enumerate(probs) if 0.01 <= p <= 0.9995]
        for phase in ("steady", "reload", "reload_window"):
            q = extract["phases"].get(phase)
            if q is not None:
                tag = f"{extract_mode}: " if extract_mode and extract_mode != "default" else ""
                cdf_ax.plot(
                    [q["quantiles_ms"][i] for i in inside],
                    [probs[i] for i in inside],
                    color=phase_colors[phase],
                    label=f"{tag}{phase_labels[phase]} ({q['requests']:,} requests)",
                )
    levels = [("p50_ms", 0.5), ("p99_ms", 0.99), ("p999_ms", 0.999)]
    markers = ["o", "s", "^"]
    for i, (mode, s) in enumerate(m for m in modes.items() if m[0] != extract_mode):
        rl = s["reload_fixed_rate"]
        for phase, row in (
            ("steady", s["steady_fixed_rate"]),
            ("reload", rl["whole_phase"]),
            ("reload_window", rl.get("reload_window") or {}),
        ):
            points = [(row[k], p) for k, p in levels if row.get(k) is not None]
            if points:
                tag = f"{mode}: " if mode != "default" else ""
                cdf_ax.plot(
                    [x for x, _ in points],
                    [p for _, p in points],
                    marker=markers[i % len(markers)],
                    linestyle="--",
                    linewidth=1,
                    color=phase_colors[phase],
                    alpha=0.8,
                    label=f"{tag}{phase_labels[phase]} (p50, p99, p99.9 only)",
                )
    cdf_ax.axvline(10, color="green", linestyle="--", linewidth=1, label="target: p99 <= 10 ms")
    cdf_ax.set_xscale("log")
    cdf_ax.set_yscale("logit")
    cdf_ax.set_ylim(0.01, 0.9995)
    cdf_ax.set_yticks([0.01, 0.1, 0.5, 0.9, 0.99, 0.999], ["0.01", "0.1", "0.5", "0.9", "0.99", "0.999"])
    cdf_ax.set_xlabel("latency per request (ms, log scale; from its scheduled send time)")
    cdf_ax.set_ylabel("fraction of requests at or below (logit scale)")
    cdf_ax.set_title(f"Latency CDF at a fixed {rate:,.0f} req/s", fontsize=10)
    cdf_ax.grid(alpha=0.3, which="both")
    cdf_ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2)

    timeline = (extract or {}).get("reload_timeline")
    if timeline:
        rows = timeline["rows"]
        t = [r[0] for r in rows]
        time_ax.plot(t, [r[2] for r in rows], color=COLORS["faiss"], label="p99 per 100 ms")
        time_ax.plot(t, [r[1] for r in rows], color=COLORS["model"], label="p50 per 100 ms")
        if timeline.get("published_at_seconds") is not None:
            time_ax.axvline(
                timeline["published_at_seconds"],
                color="black",
                linestyle="--",
                linewidth=1,
                label="new version published",
            )
        if timeline.get("swapped_at_seconds") is not None:
            time_ax.axvline(
                timeline["swapped_at_seconds"],
                color="black",
                linestyle=":",
                linewidth=1.5,
                label="first answer from the new version",
            )
        time_ax.axhline(10, color="green", linestyle="--", linewidth=1, label="10 ms")
        time_ax.set_yscale("log")
        time_ax.set_xlabel("seconds since the start of the reload phase")
        time_ax.set_ylabel("latency (ms, log scale)")
        tag = f" ({extract_mode} searcher)" if extract_mode and extract_mode != "default" else ""
        time_ax.set_title(f"During the hot reload{tag}: latency over time", fontsize=10)
        time_ax.grid(alpha=0.3, which="both")
        time_ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=3)
    else:
        labels, values, colors = [], [], []
        for mode, s in modes.items():
            window = s["reload_fixed_rate"].get("reload_window") or {}
            for label, value, color in (
                ("steady p99", s["steady_fixed_rate"]["p99_ms"], COLORS["model"]),
                ("reload p99", window.get("p99_ms"), COLORS["faiss"]),
            ):
                if value is not None:
                    labels.append(f"{mode}\n{label}" if mode != "default" else label)
                    values.append(value)
                    colors.append(color)
        time_ax.bar(labels, values, color=colors)
        time_ax.axhline(10, color="green", linestyle="--", linewidth=1, label="target: 10 ms")
        time_ax.set_ylabel("p99 latency (ms)")
        time_ax.set_title("p99 steady vs reload window (no per-request data in this run)", fontsize=10)
        time_ax.legend(fontsize=8)
    fig.suptitle(
        f"Retrieval service: {d['stories']:,} stories x {d['dim']}, {d['users']:,} users, k={d['k']}, "
        f"concurrency {d['concurrency']}, load generator on the same machine",
        fontsize=12,
    )
    return _save(fig, path)


# -- Beam jobs ----------------------------------------------------------------------------


def embedding_throughput(results: dict, path: Path) -> Path | None:
    """Embeddings/s of each Beam job (in-process and 2 processes) against the raw tower."""
    ej = _bench(results, "embedding_jobs")
    rows = [r for r in (ej or {}).get("rows", []) if "ratio_job_over_raw" in r]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(8.5, 5))
    series = [
        ("raw tower, batched Python loop (features built beforehand)", "raw_tower_median_per_s", COLORS["popularity"]),
        ("the job's work without Beam (read, features, tower)", "plain_loop_median_per_s", COLORS["other"]),
        ("Beam job, DirectRunner in-process", "job_median_per_s", COLORS["model"]),
        ("Beam job, DirectRunner 2 processes", "multi_process_2_workers_per_s", COLORS["als"]),
    ]
    series = [s for s in series if all(s[1] in r for r in rows)]
    width = 0.8 / len(series)
    for i, (label, key, color) in enumerate(series):
        xs = [j + (i - (len(series) - 1) / 2) * width for j in range(len(rows))]
        bars = ax.bar(xs, [r[key] for r in rows], width, label=label, color=color)
        ax.bar_label(bars, labels=[f"{r[key]:,.0f}" for r in rows], fontsize=8, padding=2)
    ax.set_xticks(
        range(len(rows)), [f"{r['job']}\n{r['rows']:,} rows, job/raw = {r['ratio_job_over_raw']:.2f}" for r in rows]
    )
    ax.set_yscale("log")
    ax.set_ylabel("embeddings per second (median of repeats, log scale)")
    ax.set_title("Embedding dataflows against the raw tower on the same rows (target: job/raw >= 0.5)", fontsize=10)
    ax.grid(alpha=0.3, axis="y", which="both")
    ax.legend(fontsize=8)
    return _save(fig, path)


PLOTS = {
    "training_history": training_history,
    "recall_at_k": recall_at_k,
    "recall_qps": recall_qps,
    "serving_latency": serving_latency,
    "embedding_throughput": embedding_throughput,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, default=BENCH_DIR / "results.json")
    parser.add_argument("--out-dir", type=Path, default=BENCH_DIR / "figures")
    args = parser.parse_args(argv)
    if not args.results.is_file():
        print(
            f"error: no results at {args.results}: run `make bench` (or benchmarks/run_all.py) first", file=sys.stderr
        )
        return 1
    for name, written in write_all(json.loads(args.results.read_text()), args.out_dir).items():
        print(f"{name}: {written}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
