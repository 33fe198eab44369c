"""The sharded tier against the single service, side by side in one run (issue #14).

    python benchmarks/router.py [--n 1000000] [--users 50000] [--duration 8] [--swaps 5]

1. One story snapshot and one user snapshot of one model are published into two roots;
   the index builder builds an unsharded index in one (`index.shards=1`) and a shard set
   in the other (`index.shards=2`), same M / ef_construction.
2. Recall: both loaded here, 1,000 user queries, recall@10 against exact search over the
   whole snapshot at the same ef (the unsharded version's ef_search): the set's answer is
   each shard's top-10 merged by score, exactly what the router does.
3. The single service: `ebr serve` (serving.searcher=process) on the unsharded root;
   the load generator of benchmarks/serving.py in its own process (raw HTTP/1.1 keep-alive
   connections, random known users, k=10): saturation (closed loop), then a fixed rate.
4. The sharded tier: two `ebr serve --shard I/2` (one replica each) and `ebr route` over
   them (asking the shards over the shard wire, `serving.wire`), each its own process; the
   same phases; then the fixed rate again while
   `--swaps` new shard sets (byte-identical copies under new names, prepared beforehand)
   are published one after another (the next once the router answers from the last), at
   half the tier's saturated QPS (at most --rate): failed requests, every answer's set
   version, and the seconds from each publish to the router's switch.
5. The same phases again through a router asking the same shard servers over HTTP
   (`router.transport=http`): what the wire buys.
6. The router's own overhead: `ebr_router_fanout_overhead_seconds` (fan-out + merge
   beyond the slowest shard), p50/p99 from its histogram; memory per shard server (RSS
   of the process and its index processes; `memory_bytes` of the loaded shard).
7. Every load phase: the CPU milliseconds per answered request of each server process, of
   its index processes and of the load generator (psutil, `os.times`), to say where a
   request's time goes on the shared cores.

Everything runs on this machine (2 cores here, shared): the load generator, the router,
both shard servers and their index processes compete for the same cores, which is the
main cost of the tier here and would not be on separate machines.

With --workdir the two roots are kept there, and a later run with the same sizes reuses
their indexes (same seeds, same vectors). Writes benchmarks/results/router.json and
router.md (or --out).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
REPO = Path(__file__).resolve().parents[1]
# As a script, benchmarks/ is sys.path[0]: the checkout replaces it (benchmarks/__init__.py).
sys.path[:] = [str(REPO), *(p for p in sys.path if Path(p or ".").resolve() not in (REPO, REPO / "benchmarks"))]

from artifacts.kinds import STORY_INDEX  # noqa: E402
from benchmarks import loadgen  # noqa: E402
from benchmarks import serving as SB  # noqa: E402 - its store set-up, wait_ready, copy_version
from benchmarks.targets import merged_recall_met, router_qps_met, steady_p99_met, swaps_met  # noqa: E402

K = 10


def build_roots(single_root: str, sharded_root: str, n: int, dim: int, n_users: int) -> dict:
    from artifacts import ArtifactStore
    from config import load_config
    from index_builder.publish import build_and_publish_index

    stories, user_ids, users = SB.bench_vectors(n, dim, n_users)
    out = {"stories": stories, "users": users}
    for root, shards in ((single_root, 1), (sharded_root, 2)):
        store = ArtifactStore.open(root)
        kind = store.kind(STORY_INDEX)
        built = [v for v in kind.versions() if v.complete and "-swap" not in v.name]
        if built and built[0].manifest.params.get("count") == n and built[0].manifest.params.get("dim") == dim:
            kind.rollback_to(built[0].name, reason="router benchmark: start from the built version", verify=False)
            out[shards] = {
                "store": store,
                "version": built[0].name,
                "manifest": built[0].manifest,
                "build_seconds": None,
            }
            print(f"reusing {root}: {built[0].name}", flush=True)  # same seeds, same vectors: the index is this data's
            continue
        SB.publish_vectors(store, "20261201T000000Z-bench", stories, user_ids, users, reason="router benchmark")
        cfg = load_config(overrides=[f"root={root}", f"index.shards={shards}"], environ={})
        started = time.perf_counter()
        outcome = build_and_publish_index(cfg, "stories")
        out[shards] = {
            "store": store,
            "version": outcome.version,
            "manifest": outcome.manifest,
            "build_seconds": round(time.perf_counter() - started, 1),
        }
        print(f"built {'unsharded' if shards == 1 else 'a 2-shard set'}: {outcome.detail}", flush=True)
    return out


def measure_recall(built: dict, n_queries: int = 1000) -> dict:
    """recall@10 of the unsharded index and of the merged shard set, same ef, same queries."""
    from index_builder import hnsw
    from index_builder.loaded_index import load_index
    from index_builder.sharding import download_shard, merge_top_k

    stories, users = built["stories"], built["users"]
    queries = users[:n_queries]
    exact = hnsw.exact_top_k(stories, queries, K)
    ids = np.asarray([f"s{i}" for i in range(len(stories))], dtype=object)
    exact_ids = [set(ids[row]) for row in exact]
    ef = int(built[1]["manifest"].params["ef_search"])
    with tempfile.TemporaryDirectory() as tmp:
        kind1 = built[1]["store"].kind(STORY_INDEX)
        single = load_index(kind1.download(built[1]["version"], Path(tmp) / "single"), "stories")
        kind2 = built[2]["store"].kind(STORY_INDEX)
        shards = [
            load_index(download_shard(kind2, built[2]["version"], s, 2, Path(tmp) / "set"), "stories") for s in range(2)
        ]
        for index in (single, *shards):
            index._index.set_ef(ef)
        single_found = [set(i for i, _ in single.search(q, K)[0]) for q in queries]
        merged_found = [set(i for i, _ in merge_top_k([s.search(q, K)[0] for s in shards], K)) for q in queries]
    r_single = float(np.mean([len(f & e) / K for f, e in zip(single_found, exact_ids, strict=True)]))
    r_merged = float(np.mean([len(f & e) / K for f, e in zip(merged_found, exact_ids, strict=True)]))
    return {
        "ef": ef,
        "queries": n_queries,
        "recall_at_10_unsharded": round(r_single, 4),
        "recall_at_10_merged_2_shards": round(r_merged, 4),
        "difference": round(r_merged - r_single, 4),
        "met_within_0.005": merged_recall_met(r_merged, r_single),
    }


def _start(args: list[str], log: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EBR_")}
    env["TF_USE_LEGACY_KERAS"] = "1"
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "cli.main", *args], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT
        )


def _wait(url: str, path: str = "/readyz", timeout: float = 900) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}{path}", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise SystemExit(f"{url}{path} not ready within {timeout} s")


def _cpu_seconds(servers: dict[str, subprocess.Popen]) -> dict[str, float]:
    """CPU seconds (user + system) used so far by each server process, by its descendants
    (its index processes), and by this process's waited-for children (the load generator)."""
    used: dict[str, float] = {}
    for role, process in servers.items():
        server, children = SB.process_tree_cpu_s(process.pid)
        used[f"{role} server"] = server
        used[f"{role} index processes"] = sum(children.values())
    times = os.times()
    used["load generator"] = times.children_user + times.children_system
    return used


def _phase(port: int, mode: str, args, workdir: Path, seed: int, servers: dict[str, subprocess.Popen]) -> dict:
    """One load phase, with the CPU milliseconds each process spent per answered request."""
    before = _cpu_seconds(servers)
    summary = loadgen.summarize(
        loadgen.run_loadgen(
            port,
            mode,
            duration=args.duration,
            rate=args.rate,
            seed=seed,
            concurrency=args.concurrency,
            users=args.users,
            workdir=workdir,
        )
    )
    after = _cpu_seconds(servers)
    answered = max(summary["requests"] - summary.get("failed", 0), 1)
    summary["cpu_ms_per_request"] = {role: round(1000 * (after[role] - before[role]) / answered, 3) for role in after}
    return summary


def _phases(port: int, args, workdir: Path, seed: int, servers: dict[str, subprocess.Popen]) -> dict:
    saturation = _phase(port, "closed", args, workdir, seed, servers)
    steady = _phase(port, "rate", args, workdir, seed + 1, servers)
    return {"saturation_closed_loop": saturation, "steady_fixed_rate": {"offered_rate": args.rate, **steady}}


def histogram_quantiles(metrics: str, name: str, quantiles=(0.5, 0.99)) -> dict:
    """Quantiles of a Prometheus histogram from its cumulative buckets (upper bounds)."""
    buckets = sorted(
        (float("inf") if le == "+Inf" else float(le), float(v))
        for le, v in re.findall(rf'{name}_bucket{{le="([^"]+)"}} ([0-9.e+]+)', metrics)
    )
    total = buckets[-1][1] if buckets else 0
    out = {"count": int(total)}
    for q in quantiles:
        bound = next((le for le, c in buckets if c >= q * total), None) if total else None
        out[f"p{int(q * 100)}_ms_at_most"] = None if bound is None else round(bound * 1000, 3)
    s = re.search(rf"{name}_sum ([0-9.e+-]+)", metrics)
    out["mean_ms"] = round(float(s.group(1)) / total * 1000, 3) if s and total else None
    return out


def run(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--users", type=int, default=50_000)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--swaps", type=int, default=5)
    parser.add_argument(
        "--deadline-ms",
        type=float,
        default=1000.0,
        help="router.deadline_ms (its default, 200, is for a machine of its own; on 2 shared cores "
        "a fan-out beside a reload takes longer)",
    )
    parser.add_argument("--workdir", type=Path, help="default: a temporary folder, removed at the end")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "router.json")
    args = parser.parse_args(argv)

    import httpx

    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="ebr-router-bench-") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        cache = Path("/dev/shm") / f"ebr-router-bench-{os.getpid()}" if Path("/dev/shm").is_dir() else workdir / "cache"
        single_root, sharded_root = f"file://{workdir}/single", f"file://{workdir}/sharded"
        built = build_roots(single_root, sharded_root, args.n, args.dim, args.users)
        recall = measure_recall(built)
        print(f"recall: {recall}", flush=True)
        processes: list[subprocess.Popen] = []
        try:
            # -- the single service --
            port = SB._free_port()
            single = _start(
                [
                    "--root",
                    single_root,
                    "--set",
                    f"serving.cache_dir={cache}/single",
                    "serve",
                    "--port",
                    str(port),
                    "--poll-interval",
                    "1",
                ],
                workdir / "single.log",
            )
            processes.append(single)
            _wait(f"http://127.0.0.1:{port}")
            print("single service: load phases ...", flush=True)
            single_result = _phases(port, args, workdir, seed=1, servers={"service": single})
            single_result["rss_bytes"] = SB._rss(single.pid)
            SB.stop_process(single, 30)

            # -- the sharded tier --
            shard_ports = [SB._free_port() for _ in range(2)]
            shards = [
                _start(
                    [
                        "--root",
                        sharded_root,
                        "--set",
                        f"serving.cache_dir={cache}/shard-{s}",
                        "serve",
                        "--shard",
                        f"{s}/2",
                        "--port",
                        str(p),
                        "--poll-interval",
                        "0.5",
                    ],
                    workdir / f"shard-{s}.log",
                )
                for s, p in enumerate(shard_ports)
            ]
            processes.extend(shards)
            for p in shard_ports:
                _wait(f"http://127.0.0.1:{p}")
            replicas = json.dumps([[f"http://127.0.0.1:{p}"] for p in shard_ports])

            def start_router(transport: str) -> tuple[subprocess.Popen, int]:
                port = SB._free_port()
                router = _start(
                    [
                        "--root",
                        sharded_root,
                        "--set",
                        f"serving.cache_dir={cache}/router-{transport}",
                        "--set",
                        "serving.poll_interval_s=0.5",
                        "--set",
                        "router.health_interval_s=0.25",
                        "--set",
                        f"router.deadline_ms={args.deadline_ms}",
                        "--set",
                        f"router.transport={transport}",
                        "route",
                        "--port",
                        str(port),
                        "--replicas",
                        replicas,
                    ],
                    workdir / f"router-{transport}.log",
                )
                processes.append(router)
                _wait(f"http://127.0.0.1:{port}")
                return router, port

            router, router_port = start_router("wire")
            shard_memory = []
            for s, (p, process) in enumerate(zip(shard_ports, shards, strict=True)):
                status = httpx.get(f"http://127.0.0.1:{p}/v1/shard", timeout=5).json()
                held = status["collections"]["stories"]["versions"][0]
                shard_memory.append(
                    {
                        "shard": s,
                        "items": held["count"],
                        "loaded_index_memory_bytes": held["memory_bytes"],
                        "server_tree_rss_bytes": SB._rss(process.pid),
                    }
                )
            print("router: load phases ...", flush=True)
            tier = {"router": router, **{f"shard {s}": shard for s, shard in enumerate(shards)}}
            routed = _phases(router_port, args, workdir, seed=11, servers=tier)
            overhead_steady = histogram_quantiles(
                httpx.get(f"http://127.0.0.1:{router_port}/metrics").text, "ebr_router_fanout_overhead_seconds"
            )

            # -- shard-set swaps under load --
            kind = built[2]["store"].kind(STORY_INDEX)
            base = built[2]["version"]
            stamp = datetime.now(UTC).strftime("%H%M%S")
            copies = [f"{base}-swap{stamp}-{i}" for i in range(args.swaps)]
            source = kind.local_dir(base)
            for name in copies:
                SB.copy_version(built[2]["store"], STORY_INDEX, base, name, source)
            os.sync()
            published: list[str] = []

            switched: list[float] = []

            def publish_all() -> None:
                # One swap at a time: the next set is published once the router answers from
                # this one (a swap is complete when every shard holds it and the router moved).
                for name in copies:
                    time.sleep(1.0)
                    at = time.monotonic()
                    kind.publish(name, reason="router benchmark: a swap under load")
                    published.append(name)
                    while time.monotonic() - at < 60:
                        pin = (
                            httpx.get(f"http://127.0.0.1:{router_port}/v1/versions", timeout=5)
                            .json()["pinned"]
                            .get("stories")
                        )
                        if pin and pin["version"] == name:
                            switched.append(round(time.monotonic() - at, 2))
                            break
                        time.sleep(0.1)

            # At a rate the tier sustains here (half its saturated QPS, at most --rate): the phase
            # measures what a swap costs, not an overload's backlog running past the deadline.
            swap_rate = min(args.rate, 0.5 * routed["saturation_closed_loop"]["qps"])
            swap_seconds = args.duration + 8.0 * args.swaps
            publisher = threading.Thread(target=publish_all)
            publisher.start()
            rows = loadgen.run_loadgen(
                router_port,
                "rate",
                duration=swap_seconds,
                rate=swap_rate,
                seed=21,
                concurrency=args.concurrency,
                users=args.users,
                workdir=workdir,
            )
            publisher.join()
            names = [str(v) for v in rows["names"]]
            answered_by = {names[c]: int((rows["version"] == c).sum()) for c in range(len(names))}
            statuses = {str(code): int((rows["status"] == code).sum()) for code in np.unique(rows["status"])}
            swaps = {
                "published": len(published),
                "seconds_to_switch": switched,
                "offered_rate": round(swap_rate, 1),
                "whole_phase": loadgen.summarize(rows),
                "statuses": statuses,
                "answers_per_set_version": answered_by,
                "sets_answered_from": len([v for v in answered_by if v in (base, *copies)]),
            }
            metrics = httpx.get(f"http://127.0.0.1:{router_port}/metrics").text
            overhead_all = histogram_quantiles(metrics, "ebr_router_fanout_overhead_seconds")
            SB.stop_process(router, 30)

            # -- the same tier, the router asking the shards over HTTP (router.transport=http) --
            router, router_port = start_router("http")
            print("router over HTTP: load phases ...", flush=True)
            routed_http = _phases(router_port, args, workdir, seed=31, servers={**tier, "router": router})
        finally:
            for process in processes:
                SB.stop_process(process, 30)
            if cache.parent == Path("/dev/shm"):
                subprocess.run(["rm", "-rf", str(cache)], check=False)

    sat_ratio = routed["saturation_closed_loop"]["qps"] / max(single_result["saturation_closed_loop"]["qps"], 1e-9)
    steady = routed["steady_fixed_rate"]
    result = {
        "benchmark": "router",
        "started_at": started_at,
        "cpus": os.cpu_count(),
        "load_average_at_start": load_start,
        "platform": platform.platform(),
        "n": args.n,
        "dim": args.dim,
        "users": args.users,
        "duration_s": args.duration,
        "router_deadline_ms": args.deadline_ms,
        "build_seconds": {"unsharded": built[1]["build_seconds"], "2_shards": built[2]["build_seconds"]},
        "recall": recall,
        "single_service": single_result,
        "router_2x1": {**routed, "shard_memory": shard_memory},
        "router_2x1_http": routed_http,
        "router_overhead_steady": overhead_steady,
        "router_overhead_all_phases": overhead_all,
        "swaps": swaps,
        "targets": {
            "merged_recall_within_0.005": recall["met_within_0.005"],
            "router_p99_le_10ms_at_1000qps": {
                "p99_ms": steady["p99_ms"],
                "qps": steady["qps"],
                "met": steady_p99_met(steady),
            },
            "router_qps_ge_half_single": {"ratio": round(sat_ratio, 3), "met": router_qps_met(sat_ratio)},
            "zero_failed_during_swaps": {
                "failed": swaps["whole_phase"]["failed"],
                "swaps": len(published),
                "sets_answered_from": swaps["sets_answered_from"],
                "offered_rate": swaps["offered_rate"],
                "met": swaps_met(swaps["whole_phase"]["failed"], len(published)),
            },
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=float))
    args.out.with_suffix(".md").write_text(to_markdown(result))
    print(to_markdown(result))
    return result


def _cpu_cell(phase: dict) -> str:
    used = phase.get("cpu_ms_per_request")
    if not used:
        return ""
    parts = [f"{role} {ms:.3f}" for role, ms in used.items() if ms > 0]
    return "; ".join(parts) + f"; total {sum(used.values()):.3f}"


def to_markdown(r: dict) -> str:
    columns = [r["single_service"], r["router_2x1"], *([r["router_2x1_http"]] if "router_2x1_http" in r else [])]

    def row(label: str, cell) -> str:
        return f"| {label} | " + " | ".join(str(cell(c)) for c in columns) + " |"

    rate = r["single_service"]["steady_fixed_rate"]["offered_rate"]
    rows = [
        "| | single service | router, 2 shards × 1 replica (shard wire) |"
        + (" the same router over HTTP |" if len(columns) == 3 else ""),
        "|---" * (len(columns) + 1) + "|",
        row("saturated QPS (closed loop, 16 connections)", lambda c: c["saturation_closed_loop"]["qps"]),
        row(
            f"p50 / p99 ms at {rate:.0f}/s",
            lambda c: f"{c['steady_fixed_rate']['p50_ms']} / {c['steady_fixed_rate']['p99_ms']}",
        ),
        row("achieved QPS at that rate", lambda c: c["steady_fixed_rate"]["qps"]),
        row("failed requests", lambda c: c["saturation_closed_loop"]["failed"] + c["steady_fixed_rate"]["failed"]),
        row("CPU ms per request, saturated (per process)", lambda c: _cpu_cell(c["saturation_closed_loop"])),
        row(f"CPU ms per request at {rate:.0f}/s (per process)", lambda c: _cpu_cell(c["steady_fixed_rate"])),
    ]
    t = r["router_2x1"]
    lines = [
        f"# Router benchmark ({r['n']:,} × {r['dim']}, {r['users']:,} users, {r['cpus']} CPUs, load {r['load_average_at_start'][0]:.1f} at start)",
        "",
        *rows,
        "",
        f"recall@10 at ef={r['recall']['ef']}: unsharded {r['recall']['recall_at_10_unsharded']}, merged 2 shards "
        f"{r['recall']['recall_at_10_merged_2_shards']} (difference {r['recall']['difference']})",
        "",
        f"router overhead (fan-out + merge beyond the slowest shard), steady phases: {r['router_overhead_steady']}",
        "",
        f"swaps under load at {r['swaps']['offered_rate']}/s (router.deadline_ms={r['router_deadline_ms']:g}): {r['swaps']['published']} published, "
        f"seconds from publish to the router's switch {r['swaps']['seconds_to_switch']}, "
        f"{r['swaps']['whole_phase']}, statuses {r['swaps']['statuses']}, answers per set version "
        f"{r['swaps']['answers_per_set_version']}",
        "",
        "memory per shard: "
        + "; ".join(
            f"shard {m['shard']}: {m['items']:,} items, index {m['loaded_index_memory_bytes'] / 2**20:.0f} MiB, "
            f"server + index process RSS {m['server_tree_rss_bytes'] / 2**20:.0f} MiB"
            for m in t["shard_memory"]
        ),
        "",
        "targets: " + json.dumps(r["targets"]),
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    run()
