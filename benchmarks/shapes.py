"""The shapes of the benchmark scripts' JSON that more than one reader needs.

The figures (figures.py), the targets (targets.py), the Markdown (report.py) and the
plots (plots.py) read the same few structures; each is read here once, including the
older formats results files still hold.
"""

from __future__ import annotations


def results_of(benchmarks: dict[str, dict], name: str) -> dict | None:
    """The JSON benchmark NAME wrote, from run_all's records (None if it did not run)."""
    record = benchmarks.get(name)
    return record.get("results") if record else None


def serving_modes(serving: dict) -> dict[str, dict]:
    """The served measurements per `serving.searcher` mode, in one shape for either format.

    benchmarks/serving.py writes {"searchers": {mode: {saturation_closed_loop,
    steady_fixed_rate, reload_fixed_rate, memory}}}; its first version wrote one
    unnamed set under "served" (+ "memory"), returned here as mode "default".
    """
    if "searchers" in serving:
        return dict(serving["searchers"])
    return {"default": {**serving["served"], "memory": serving.get("memory", {})}}


def sweep_sets(sweep: list[dict]) -> dict[str | None, list[dict]]:
    """An ef sweep split by query set (`query_set`; None when the sweep has one set), in order."""
    sets: dict[str | None, list[dict]] = {}
    for row in sweep:
        sets.setdefault(row.get("query_set"), []).append(row)
    return sets


def fastest_at_recall(sweep: list[dict], recall: float) -> dict | None:
    """The sweep row with the most QPS among those reaching `recall` (None if none does)."""
    passing = [r for r in sweep if r["recall_at_10"] >= recall]
    return max(passing, key=lambda r: r["qps"]) if passing else None
