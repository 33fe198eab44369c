"""HNSW index benchmark, side by side in one run: hnswlib against exact numpy search and
faiss-cpu HNSW, plus an incremental update against a full rebuild.

    python benchmarks/index_build.py [--n 1000000] [--dim 128] [--m 16] [--ef-construction 200]

On clustered synthetic vectors (`benchmarks.synthetic_vectors`: Zipf-sized clusters, each
spread over a 16-d subspace; not uniform random vectors, a worst case that tower outputs
do not resemble). Query sets, each of `--queries` vectors with exact top-10 as truth:

  * held-out (decides the targets): points drawn from the same generator as the indexed
    ones and left out of the index, the ann-benchmarks methodology (a query is a new
    item or user from the same distribution, not a copy of a stored one);
  * noise N (stress sets): stored vectors plus Gaussian noise of norm N, renormalised,
    what the builder's validation falls back to when it has no user embeddings of the
    model (0.75; cosine about 0.8 to the source vector) and a milder 0.3.

Figures:

  * exact search: numpy inner products + argpartition, one query at a time, one thread;
  * hnswlib: build vectors/s (all `--threads`), bytes/vector of the saved index, and for
    each ef of `--ef`: recall@10 against exact search and queries/s, one query at a
    time on one thread (how the service calls it);
  * faiss-cpu IndexHNSWFlat with the same M and efConstruction (inner product): the same
    figures;
  * freshness: `--update-fraction` of the items expire and as many new ones arrive; the
    incremental update (index_builder.builder.plan_update + apply_update, in place) is
    timed against a full build of the new snapshot (index_builder.builder.build_full).
    Graph work only in both: downloading and saving are the same for either.

Prints Markdown tables and writes JSON (default benchmarks/results/index_build.json) and
the same tables as .md next to it.
"""

from __future__ import annotations

import os

# "Single thread" for exact search means BLAS too; set before numpy is imported. faiss
# and hnswlib builds get their thread counts explicitly.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from datetime import UTC, datetime  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# As a script, benchmarks/ is sys.path[0]: the checkout replaces it (benchmarks/__init__.py).
sys.path[:] = [str(REPO), *(p for p in sys.path if Path(p or ".").resolve() not in (REPO, REPO / "benchmarks"))]

from artifacts.embedding_snapshots import EmbeddingSnapshot  # noqa: E402
from artifacts.kinds import STORY_EMBEDDINGS, STORY_INDEX  # noqa: E402
from artifacts.manifest import Manifest  # noqa: E402
from benchmarks.synthetic_vectors import clustered_vectors, story_ids  # noqa: E402
from benchmarks.targets import incremental_met, index_recall_speed  # noqa: E402
from config import IndexConfig  # noqa: E402
from index_builder import hnsw  # noqa: E402
from index_builder.builder import PreviousIndex, apply_update, build_full, plan_update  # noqa: E402

K = 10
HELD_OUT = "held-out"


def exact_single_query_qps(base: np.ndarray, queries: np.ndarray) -> float:
    """Queries/s of brute-force top-10, one query at a time ([n] scores, argpartition, sort)."""
    started = time.perf_counter()
    for q in queries:
        scores = base @ q
        top = np.argpartition(-scores, K)[:K]
        top[np.argsort(-scores[top])]
    return len(queries) / (time.perf_counter() - started)


def hnswlib_sweep(index, queries: np.ndarray, exact: np.ndarray, efs: list[int]) -> list[dict]:
    """recall@10 and single-query single-thread QPS of an hnswlib index for each ef."""
    rows = []
    index.set_num_threads(1)
    for ef in efs:
        index.set_ef(ef)
        started = time.perf_counter()
        found = np.vstack([index.knn_query(q[None], k=K, num_threads=1)[0] for q in queries])
        qps = len(queries) / (time.perf_counter() - started)
        rows.append({"ef": ef, "recall_at_10": round(hnsw.recall_at_k(found, exact), 4), "qps": round(qps, 1)})
    return rows


def faiss_sweep(index, queries: np.ndarray, exact: np.ndarray, efs: list[int]) -> list[dict]:
    import faiss

    faiss.omp_set_num_threads(1)
    rows = []
    for ef in efs:
        index.hnsw.efSearch = ef
        started = time.perf_counter()
        found = np.vstack([index.search(q[None], K)[1] for q in queries])
        qps = len(queries) / (time.perf_counter() - started)
        rows.append({"ef": ef, "recall_at_10": round(hnsw.recall_at_k(found, exact), 4), "qps": round(qps, 1)})
    return rows


def build_faiss(vectors: np.ndarray, m: int, ef_construction: int, threads: int, workdir: Path) -> tuple[object, dict]:
    import faiss

    faiss.omp_set_num_threads(threads)
    index = faiss.IndexHNSWFlat(vectors.shape[1], m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = ef_construction
    started = time.perf_counter()
    index.add(vectors)
    seconds = time.perf_counter() - started
    return index, build_stats(
        len(vectors), seconds, workdir / "faiss.index", lambda path: faiss.write_index(index, path)
    )


def build_hnswlib(
    vectors: np.ndarray, m: int, ef_construction: int, threads: int, workdir: Path
) -> tuple[object, dict]:
    started = time.perf_counter()
    index = hnsw.build_graph(vectors, m=m, ef_construction=ef_construction, threads=threads)
    seconds = time.perf_counter() - started
    return index, build_stats(len(vectors), seconds, workdir / "index.hnsw", index.save_index)


def build_stats(count: int, seconds: float, path: Path, save) -> dict:
    """Build speed and the saved index's bytes per vector: SAVE(str(PATH)) writes it, then it is removed."""
    save(str(path))
    size = path.stat().st_size
    path.unlink()
    return {
        "build_seconds": round(seconds, 2),
        "vectors_per_second": round(count / seconds, 1),
        "bytes_per_vector": round(size / count, 1),
    }


def snapshot(ids: np.ndarray, vectors: np.ndarray, name: str) -> EmbeddingSnapshot:
    manifest = Manifest(
        STORY_EMBEDDINGS,
        name,
        {},
        "",
        "",
        parents={"model_version": "bench"},
        params={"dim": vectors.shape[1]},
        metrics={"count": len(ids)},
    )
    return EmbeddingSnapshot(ids, vectors, manifest)


def freshness(
    index,
    ids: np.ndarray,
    vectors: np.ndarray,
    cfg: IndexConfig,
    fraction: float,
    *,
    rebuild: bool,
    full_seconds: float,
    queries: int,
    seed: int,
    workdir: Path,
) -> dict:
    """Expires the oldest `fraction` of items, adds as many new ones; incremental vs full.

    The incremental side is timed as the builder runs it: load the previous index from a
    local file, diff it against the new snapshot, update the graph in place.
    """
    import hnswlib

    n = len(ids)
    turnover = max(1, int(n * fraction))
    # New stories are about the same topics: points near random existing ones, not copies.
    fresh = hnsw.held_aside_queries(vectors, turnover, seed=seed + 1, noise=0.3)
    new_ids = np.concatenate([ids[turnover:], story_ids(n, turnover)])
    new_vectors = np.concatenate([vectors[turnover:], fresh])
    after = snapshot(new_ids, new_vectors, "after")
    params = {"dim": vectors.shape[1], "M": cfg.m, "ef_construction": cfg.ef_construction}
    manifest = Manifest(STORY_INDEX, "before", {}, "", "", {"model_version": "bench"}, params, {})
    index_file = workdir / "previous.hnsw"
    index.save_index(str(index_file))  # what the builder downloads: the published previous version
    del index

    started = time.perf_counter()
    graph = hnswlib.Index(space="ip", dim=vectors.shape[1])
    graph.load_index(str(index_file), allow_replace_deleted=True)
    loaded_seconds = time.perf_counter() - started
    previous = PreviousIndex(manifest, graph, ids.copy(), index_file=index_file)
    plan = plan_update(previous, after)
    planned_seconds = time.perf_counter() - started - loaded_seconds
    built = apply_update(previous, after, plan, cfg)
    incremental_seconds = time.perf_counter() - started

    probe = hnsw.held_aside_queries(new_vectors, queries, seed=seed + 2)
    exact = hnsw.exact_top_k(new_vectors, probe, K, base_labels=built.row_labels)
    result = {
        "expired": turnover,
        "added": turnover,
        "fraction": fraction,
        "incremental_seconds": round(incremental_seconds, 2),
        "incremental_load_seconds": round(loaded_seconds, 2),
        "incremental_plan_seconds": round(planned_seconds, 2),
        "incremental_graph_seconds": round(built.build_seconds, 2),
        "incremental_recall_at_10": round(hnsw.graph_recall(built.graph, probe, exact, ef=cfg.ef_search, threads=0), 4),
        "deleted_fraction": round(plan.deleted_fraction, 4),
    }
    if rebuild:
        del graph, built, previous  # free the updated graph before the rebuild
        full = build_full(after, cfg)
        exact_full = hnsw.exact_top_k(new_vectors, probe, K)
        result["full_rebuild_seconds"] = round(full.build_seconds, 2)
        result["full_rebuild_recall_at_10"] = round(
            hnsw.graph_recall(full.graph, probe, exact_full, ef=cfg.ef_search, threads=0), 4
        )
        result["full_rebuild_measured"] = "rebuild of the new snapshot, same run"
    else:
        result["full_rebuild_seconds"] = round(full_seconds, 2)
        result["full_rebuild_measured"] = "the initial full build of the same size (--no-rebuild)"
    result["speedup"] = round(result["full_rebuild_seconds"] / incremental_seconds, 1)
    return result


def run(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000, help="indexed vectors")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--m", type=int, default=16, help="HNSW M (both libraries)")
    parser.add_argument("--ef-construction", type=int, default=200, help="HNSW efConstruction (both libraries)")
    parser.add_argument("--ef-search", type=int, default=64, help="ef the incremental comparison validates with")
    parser.add_argument("--ef", default="10,16,32,50,64,100,128,200,300,400", help="ef values of the recall/QPS curve")
    parser.add_argument("--intrinsic-dim", type=int, default=16, help="dimension of each cluster's subspace")
    parser.add_argument(
        "--query-noise",
        default="0.75,0.3",
        help="stress query sets besides the held-out one: norms of the noise added to stored vectors",
    )
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="build threads")
    parser.add_argument("--queries", type=int, default=1000, help="held-aside queries for recall and QPS")
    parser.add_argument("--exact-queries", type=int, default=200, help="queries timed for exact search QPS")
    parser.add_argument(
        "--update-fraction", type=float, default=0.01, help="share of items expired (and as many added)"
    )
    parser.add_argument(
        "--no-rebuild",
        dest="rebuild",
        action="store_false",
        help="compare the incremental update with the initial build instead of rebuilding",
    )
    parser.add_argument("--no-faiss", dest="faiss", action="store_false")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--note", default="", help="free text stored with the results (e.g. machine load)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "index_build.json")
    args = parser.parse_args(argv)
    efs = [int(e) for e in args.ef.split(",")]
    noises = [float(x) for x in args.query_noise.split(",")]
    cfg = IndexConfig(
        m=args.m,
        ef_construction=args.ef_construction,
        ef_search=args.ef_search,
        threads=args.threads,
        max_changed_fraction=1.0,
        max_deleted_fraction=1.0,
    )
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    wall = time.perf_counter()

    log(f"generating {args.n} x {args.dim} clustered vectors (+ {args.queries} held out)")
    clusters = max(100, args.n // 1000)
    vectors, held_out = held_out_split(
        clustered_vectors(
            args.n + args.queries, args.dim, clusters=clusters, intrinsic_dim=args.intrinsic_dim, seed=args.seed
        ),
        args.queries,
        seed=args.seed + 7,
    )
    ids = story_ids(0, args.n)
    query_sets = {HELD_OUT: held_out}
    for noise in noises:
        query_sets[f"noise {noise}"] = hnsw.held_aside_queries(vectors, args.queries, seed=args.seed + 7, noise=noise)

    log("exact search: ground truth and single-query QPS")
    t = time.perf_counter()
    exact = {name: hnsw.exact_top_k(vectors, q, K) for name, q in query_sets.items()}
    exact_batch_seconds = (time.perf_counter() - t) / len(query_sets)
    exact_qps = exact_single_query_qps(vectors, held_out[: args.exact_queries])

    results: dict = {
        "benchmark": "index_build",
        "started_at": started_at,
        "command": "python benchmarks/index_build.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": machine(args.note),
        "data": {
            "n": args.n,
            "dim": args.dim,
            "clusters": clusters,
            "intrinsic_dim": args.intrinsic_dim,
            "generator": "benchmarks.synthetic_vectors.clustered_vectors",
            "queries_per_set": args.queries,
            "query_sets": list(query_sets),
            "query_kind": {
                HELD_OUT: "points of the same generator left out of the index (decides the targets)",
                "noise N": "stored vectors + Gaussian noise of norm N, renormalised "
                "(index_builder.hnsw.held_aside_queries; validation's fallback uses 0.75)",
            },
        },
        "params": {"M": args.m, "ef_construction": args.ef_construction, "build_threads": args.threads, "k": K},
        "exact": {
            "qps_single_query": round(exact_qps, 1),
            "timed_queries": min(args.exact_queries, args.queries),
            "batch_ground_truth_seconds": round(exact_batch_seconds, 2),
        },
    }

    with tempfile.TemporaryDirectory(prefix="ebr-index-bench-") as tmp:
        log(f"hnswlib build, {args.threads} threads")
        index, build = build_hnswlib(vectors, args.m, args.ef_construction, args.threads, Path(tmp))
        log(f"  {build}")
        results["hnswlib"] = {"build": build, "sweep": sweeps(hnswlib_sweep, index, query_sets, exact, efs, exact_qps)}
        if args.faiss:
            log(f"faiss IndexHNSWFlat build, {args.threads} threads")
            faiss_index, faiss_build = build_faiss(vectors, args.m, args.ef_construction, args.threads, Path(tmp))
            log(f"  {faiss_build}")
            results["faiss"] = {
                "build": faiss_build,
                "sweep": sweeps(faiss_sweep, faiss_index, query_sets, exact, efs, exact_qps),
            }
            del faiss_index
        log(f"freshness: {args.update_fraction:.1%} expired and as many added")
        results["incremental"] = freshness(
            index,
            ids,
            vectors,
            cfg,
            args.update_fraction,
            rebuild=args.rebuild,
            full_seconds=build["build_seconds"],
            queries=args.queries,
            seed=args.seed,
            workdir=Path(tmp),
        )
        del index

    results["targets"] = targets(results)
    results["wall_seconds"] = round(time.perf_counter() - wall, 1)
    text = markdown(results)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(text + "\n")
    log(f"wrote {args.out} and {args.out.with_suffix('.md')}")
    return results


def held_out_split(vectors: np.ndarray, n_queries: int, *, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(indexed vectors, held-out queries): a random `n_queries` rows left out of the index."""
    order = np.random.default_rng(seed).permutation(len(vectors))
    return vectors[np.sort(order[n_queries:])], vectors[order[:n_queries]]


def sweeps(sweep, index, query_sets: dict, exact: dict, efs: list[int], exact_qps: float) -> list[dict]:
    rows = []
    for name, queries in query_sets.items():
        for row in sweep(index, queries, exact[name], efs):
            rows.append({"query_set": name, **row, "speedup_vs_exact": round(row["qps"] / exact_qps, 1)})
    return rows


def fastest_at(rows: list[dict], recall: float, query_set: str) -> dict | None:
    passing = [r for r in rows if r["query_set"] == query_set and r["recall_at_10"] >= recall]
    return max(passing, key=lambda r: r["qps"]) if passing else None


def targets(results: dict) -> dict:
    """The issue's targets (recall@10 >= 0.99 at >= 50x exact QPS; incremental >= 20x), judged by benchmarks/targets.py."""
    rows = results["hnswlib"]["sweep"]
    sets = list(dict.fromkeys(r["query_set"] for r in rows))
    recall = index_recall_speed(rows, results["exact"]["qps_single_query"])
    best = recall["best"]
    return {
        "query_set": recall["query_set"],
        "recall_0.99_fastest_ef": best["ef"] if best else None,
        "recall_0.99_speedup_vs_exact": best["speedup_vs_exact"] if best else None,
        "recall_0.99_at_50x_met": recall["met"],
        "other_query_sets": {
            name: (lambda b: {"fastest_ef": b["ef"], "speedup_vs_exact": b["speedup_vs_exact"]} if b else None)(
                fastest_at(rows, 0.99, name)
            )
            for name in sets[1:]
        },
        "incremental_speedup": results["incremental"]["speedup"],
        "incremental_20x_met": incremental_met(results["incremental"]),
    }


def machine(note: str) -> dict:
    from importlib.metadata import version

    import faiss
    import hnswlib  # noqa: F401

    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "numpy": np.__version__,
        "hnswlib": version("hnswlib"),
        "faiss": faiss.__version__,
        "note": note,
    }


def markdown(r: dict) -> str:
    d, p, e = r["data"], r["params"], r["exact"]
    lines = [
        f"### HNSW index: {d['n']:,} x {d['dim']} clustered vectors, M={p['M']}, ef_construction={p['ef_construction']}",
        "",
        f"Exact numpy search (1 thread, 1 query at a time): **{e['qps_single_query']:,.1f} QPS**.",
        "",
        "| library | queries | ef | recall@10 | QPS (1 thread, 1 query) | × exact |",
        "|---|---|---|---|---|---|",
    ]
    for name in ("hnswlib", "faiss"):
        for row in r.get(name, {}).get("sweep", []):
            lines.append(
                f"| {name} | {row['query_set']} | {row['ef']} | {row['recall_at_10']:.4f} | {row['qps']:,.0f} | "
                f"{row['speedup_vs_exact']:,.1f} |"
            )
    lines += [
        "",
        f"| library | build vectors/s ({p['build_threads']} threads) | build seconds | bytes/vector (saved index) |",
        "|---|---|---|---|",
    ]
    for name in ("hnswlib", "faiss"):
        if name in r:
            b = r[name]["build"]
            lines.append(
                f"| {name} | {b['vectors_per_second']:,.0f} | {b['build_seconds']:,.1f} | {b['bytes_per_vector']:,.1f} |"
            )
    i = r["incremental"]
    lines += [
        "",
        f"Freshness: {i['expired']:,} items expired and {i['added']:,} added ({i['fraction']:.1%} turnover): "
        f"incremental update **{i['incremental_seconds']:.1f} s** (load {i['incremental_load_seconds']:.1f} s, diff "
        f"{i['incremental_plan_seconds']:.1f} s, graph {i['incremental_graph_seconds']:.1f} s; recall@10 {i['incremental_recall_at_10']:.4f}), "
        f"full rebuild {i['full_rebuild_seconds']:.1f} s ({i['full_rebuild_measured']}"
        + (f", recall@10 {i['full_rebuild_recall_at_10']:.4f}" if "full_rebuild_recall_at_10" in i else "")
        + f"): **{i['speedup']}× faster**.",
    ]
    t = r["targets"]
    lines += [
        "",
        f"Targets ({t['query_set']} queries): recall@10 ≥ 0.99 at ≥ 50× exact QPS: {'met' if t['recall_0.99_at_50x_met'] else 'NOT met'} "
        f"(fastest ef with recall ≥ 0.99: {t['recall_0.99_fastest_ef']}, {t['recall_0.99_speedup_vs_exact']}× exact; "
        f"other query sets: {t['other_query_sets']}); "
        f"incremental ≥ 20× a full rebuild: {'met' if t['incremental_20x_met'] else 'NOT met'} ({t['incremental_speedup']}×).",
    ]
    if r["machine"]["note"]:
        lines += ["", f"Note: {r['machine']['note']}"]
    return "\n".join(lines)


def log(message: str) -> None:
    print(f"[{datetime.now(UTC):%H:%M:%S}] {message}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    run()
