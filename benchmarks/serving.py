"""Retrieval service speed, in one run: served QPS and latency against raw hnswlib on the
same index, latency while a new version is hot-reloaded, and memory per loaded version.

    python benchmarks/serving.py [--n 1000000] [--dim 128] [--users 100000] [--duration 10]

1. Clustered story vectors (benchmarks.synthetic_vectors) and user vectors near them are
   published as embedding snapshots of one model; `build_and_publish_index` builds and
   publishes the story index (config defaults: M=16, ef_construction=200, ef_search=64).
2. Raw hnswlib: the same index file loaded with hnswlib in this process, single-thread
   single-query `knn_query(k=10)` over user vectors (the ceiling the service is held to).
3. `ebr serve` in its own process (uvicorn, one worker), polling every second, once per
   `serving.searcher` mode: "process" (each index version in a child process) and
   "inline" (in the serving process); both start from the built version.
4. A load generator in a second process (benchmarks/loadgen.py): asyncio + raw HTTP/1.1
   keep-alive connections (16 by default) on 127.0.0.1, each request a random known
   user, k=10. Phases:
   - saturation: closed loop, every connection sends its next request on the answer;
     then the same closed loop driven by wrk (benchmarks/wrk_load.py), a load generator
     in C that takes far less of the shared cores, when `wrk` is installed (--no-wrk
     skips it); each saturation figure carries its load generator's CPU per request;
   - steady: fixed rate (--rate, default 1000/s) spread over the connections; latency is
     measured from each request's *scheduled* send time, so a stall counts in full for
     every request it delays (no coordinated omission);
   - reload: the same fixed rate while a new index version is published (a byte-identical
     copy of the built one under a new version name, prepared beforehand, so this
     process does no work during the phase); the service downloads it into its cache,
     verifies sha256, loads it into a new object, warms it and swaps. The reload window
     is from the pointer move until the answers name the new version.
5. Memory per loaded version: `LoadedIndex.memory_bytes` from /v1/versions, the RSS delta
   of loading the raw index here, the index process's RSS, and the RSS of the server with
   all its children before, at peak during, and after a reload.

With --workdir, the store is kept and a later run with the same sizes reuses its index.
The service's download cache (serving.cache_dir) goes to --cache-dir, by default a
directory in /dev/shm (tmpfs) where there is one, emptied at the end: the deployment the
README recommends, because writing a 0.7 GB version to a disk-backed cache during a
reload costs the requests served meanwhile (`--cache-dir var/...` measures that).

The machine may be shared; the JSON records the CPU count and load average at the start.
Prints a Markdown table; writes benchmarks/results/serving.json and serving.md.

One file of about 530 lines: the phases of `measure_searcher` share one server process,
its arguments and its arrays, and the pieces router.py and soak.py reuse (build_store,
copy_version, wait_ready, stop_process) stay with the one benchmark that uses them
all; the load generator, which all three run, is benchmarks/loadgen.py.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
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
# As a script, benchmarks/ is sys.path[0], where "serving" would mean this file rather than
# the package: the checkout replaces it (benchmarks/__init__.py).
sys.path[:] = [str(REPO), *(p for p in sys.path if Path(p or ".").resolve() not in (REPO, REPO / "benchmarks"))]
from artifacts.kinds import STORY_EMBEDDINGS, STORY_INDEX, USER_EMBEDDINGS  # noqa: E402
from benchmarks.loadgen import run_loadgen, summarize  # noqa: E402
from benchmarks.targets import (  # noqa: E402
    RELOAD_P99_OVER_STEADY,
    SERVED_OVER_RAW_EVERY_RUN,
    failed_requests,
    reload_met,
    reload_p99,
    served_over_raw_met,
    single_service_run_met,
    steady_p99_met,
)
from benchmarks.wrk_load import children_cpu_s, run_wrk, wrk_path  # noqa: E402
from config.loopback import free_port as _free_port  # noqa: E402 (benchmarks/router.py and soak.py call it too)

MODEL = "bench-model-1"
K = 10


# -- the benchmark -----------------------------------------------------------------------------


def stop_process(process: subprocess.Popen, timeout: float) -> None:
    """SIGINT (a server's graceful shutdown), SIGKILL if it has not exited TIMEOUT seconds later."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _rss(pid: int) -> int:
    """Resident bytes of a process and all its descendants (forkserver, index processes)."""
    import psutil

    root = psutil.Process(pid)
    total = 0
    for process in [root, *root.children(recursive=True)]:
        try:
            total += process.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


def bench_vectors(n: int, dim: int, n_users: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(story vectors, user ids, user vectors): N clustered stories (the index benchmark's
    data shape) and N_USERS users near random stories, the same every run (seeds 1 and 2)."""
    from benchmarks.synthetic_vectors import clustered_vectors

    stories = clustered_vectors(n, dim, seed=1)
    rng = np.random.default_rng(2)
    users = stories[rng.integers(0, n, size=n_users)] + rng.normal(
        scale=0.5 / np.sqrt(dim), size=(n_users, dim)
    ).astype(np.float32)
    users /= np.linalg.norm(users, axis=1, keepdims=True)
    return stories, np.asarray([f"u{i}" for i in range(n_users)], dtype=object), users


def publish_vectors(store, version: str, stories, user_ids, users, *, reason: str) -> None:
    """Publishes the story and user snapshots of bench_vectors as VERSION of one model (MODEL)."""
    from artifacts.embedding_snapshots import publish_snapshot
    from benchmarks.synthetic_vectors import story_ids

    publish_snapshot(
        store.kind(STORY_EMBEDDINGS),
        version,
        story_ids(0, len(stories)),
        stories,
        model_version=MODEL,
        as_of=0,
        shards=8,
        reason=reason,
    )
    publish_snapshot(store.kind(USER_EMBEDDINGS), version, user_ids, users, model_version=MODEL, as_of=0, reason=reason)


def build_store(root: str, n: int, dim: int, n_users: int, min_recall: float | None = None):
    """Publishes story and user snapshots of one model and builds the story index.

    Returns (store, index version, build seconds or None when reused, user vectors). A
    store left in --workdir by an earlier run with the same sizes is reused as it is.
    """
    from artifacts import ArtifactStore
    from artifacts.embedding_snapshots import read_snapshot
    from config import load_config
    from index_builder.publish import build_and_publish_index

    store = ArtifactStore.open(root)
    indexes = store.kind(STORY_INDEX)
    built = [v for v in indexes.versions() if v.complete and "copied_from" not in v.manifest.params]
    if built and built[0].manifest.params.get("count") == n and built[0].manifest.params.get("dim") == dim:
        users = read_snapshot(store.kind(USER_EMBEDDINGS))
        if len(users) == n_users:
            print(f"reusing the index {built[0].name} in {root}", flush=True)
            return store, built[0].name, None, users.vectors
    stories, user_ids, users = bench_vectors(n, dim, n_users)
    publish_vectors(store, "20261124T000000Z-bench", stories, user_ids, users, reason="serving benchmark")
    overrides = [f"root={root}"] + ([f"index.min_recall_at_10={min_recall}"] if min_recall is not None else [])
    cfg = load_config(overrides=overrides, environ={})
    started = time.perf_counter()
    outcome = build_and_publish_index(cfg, "stories")
    build_s = time.perf_counter() - started
    if not outcome.published:
        raise SystemExit(f"index not published: {outcome.detail}")
    return store, outcome.version, build_s, users


def copy_version(store, kind_name: str, version: str, new_version: str, source_dir: Path) -> None:
    """A byte-identical copy of a complete version under a new name (not published).

    source_dir: a folder holding the version's files (`local_dir` or `download` of it).
    """
    kind = store.kind(kind_name)
    manifest = kind.manifest(version)
    params = {**manifest.params, "copied_from": version}
    with kind.new_version(new_version, parents=manifest.parents, params=params) as writer:
        for name in manifest.files:
            writer.add_file(name, source_dir / name)
        writer.metrics.update(manifest.metrics)


def raw_hnswlib_qps(index_dir: Path, dim: int, ef: int, queries: np.ndarray, seconds: float) -> dict:
    """Single-thread, single-query knn_query on the published index file in `index_dir`."""
    import hnswlib
    import psutil

    from index_builder.loaded_index import INDEX_FILE

    before = psutil.Process().memory_info().rss
    started = time.perf_counter()
    index = hnswlib.Index(space="ip", dim=dim)
    index.load_index(str(index_dir / INDEX_FILE))
    load_s = time.perf_counter() - started
    rss_delta = psutil.Process().memory_info().rss - before
    index.set_ef(ef)
    index.set_num_threads(1)
    for q in queries[:200]:  # warm-up
        index.knn_query(q, k=K, num_threads=1)
    done, latencies = 0, []
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        q = queries[done % len(queries)]
        t = time.perf_counter()
        index.knn_query(q, k=K, num_threads=1)
        latencies.append(time.perf_counter() - t)
        done += 1
    elapsed = time.perf_counter() - started
    del index
    ms = np.array(latencies) * 1000
    return {
        "qps": round(done / elapsed, 1),
        "p50_ms": round(float(np.percentile(ms, 50)), 3),
        "p99_ms": round(float(np.percentile(ms, 99)), 3),
        "load_seconds": round(load_s, 2),
        "rss_delta_bytes": int(rss_delta),
    }


def wait_ready(url: str, timeout: float, version: str | None = None) -> dict:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                versions = httpx.get(f"{url}/v1/versions", timeout=5).json()
                if version is None or versions["served"]["components"][STORY_INDEX]["version"] == version:
                    return versions
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"the service at {url} was not ready within {timeout} s")


def measure_searcher(mode: str, args, store, root: str, workdir: Path, base_version: str, source_dir: Path) -> dict:
    """Starts `ebr serve` with serving.searcher=`mode`, runs the three load phases, stops it."""
    import httpx

    kind = store.kind(STORY_INDEX)
    reload_version = f"{base_version}-reload-{mode}-{datetime.now(UTC):%Y%m%dT%H%M%S}"
    copy_version(store, STORY_INDEX, base_version, reload_version, source_dir)
    # Write the copy's dirty pages back now: left to the kernel, the writeback of ~0.7 GB
    # starts ~30 s later (vm.dirty_expire_centisecs), in the middle of the measurements.
    os.sync()
    kind.rollback_to(
        base_version, reason=f"serving benchmark: start the {mode} run from the built version", verify=False
    )
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cli.main",
            "--root",
            root,
            "--set",
            f"serving.cache_dir={args.cache_dir}/cache-{mode}",
            "--set",
            f"serving.searcher={mode}",
            "serve",
            "--port",
            str(port),
            "--poll-interval",
            "1",
        ],
        cwd=REPO,
        env={**os.environ, "TF_USE_LEGACY_KERAS": "1"},
        stdout=subprocess.DEVNULL,
    )
    try:
        started = time.monotonic()
        versions = wait_ready(url, timeout=1800, version=base_version)
        first_load_s = time.monotonic() - started
        component = versions["served"]["components"][STORY_INDEX]
        rss_loaded = _rss(server.pid)

        common = dict(concurrency=args.concurrency, users=args.users, workdir=workdir)
        print(f"[{mode}] saturation (closed loop) ...", flush=True)
        cpu_before = children_cpu_s()
        saturation = summarize(run_loadgen(port, "closed", duration=args.duration, rate=args.rate, seed=1, **common))
        saturation["load_generator_cpu_ms_per_request"] = round(
            1000 * (children_cpu_s() - cpu_before) / max(saturation["requests"], 1), 4
        )
        saturation_wrk = None
        if args.wrk:
            print(f"[{mode}] saturation (closed loop, wrk) ...", flush=True)
            cpu_before = process_tree_cpu_s(server.pid)
            saturation_wrk = run_wrk(port, duration=args.duration, concurrency=args.concurrency, users=args.users)
            saturation_wrk["service_cpu"] = cpu_budget(cpu_before, process_tree_cpu_s(server.pid), saturation_wrk)
        print(f"[{mode}] steady at {args.rate:.0f}/s ...", flush=True)
        steady = summarize(run_loadgen(port, "rate", duration=args.duration, rate=args.rate, seed=2, **common))

        print(f"[{mode}] reload at {args.rate:.0f}/s ...", flush=True)
        peak_rss = [rss_loaded]
        stop_sampling = threading.Event()
        publish_at: list[float] = []

        def sample_rss() -> None:
            while not stop_sampling.is_set():
                peak_rss[0] = max(peak_rss[0], _rss(server.pid))
                stop_sampling.wait(0.1)

        def publish_later() -> None:
            time.sleep(2.0)
            publish_at.append(time.monotonic())
            kind.publish(reload_version, reason="serving benchmark: reload under load")

        threads = [threading.Thread(target=sample_rss), threading.Thread(target=publish_later)]
        for t in threads:
            t.start()
        rows = run_loadgen(
            port, "rate", duration=max(args.duration, 8.0 + 2.0 * first_load_s), rate=args.rate, seed=3, **common
        )
        stop_sampling.set()
        for t in threads:
            t.join()
        names = list(rows["names"])
        new_code = names.index(reload_version) if reload_version in names else -1
        swapped = float(rows["start"][rows["version"] == new_code].min()) if new_code >= 0 else None
        window = (rows["start"] >= publish_at[0]) & (
            rows["start"] <= (swapped if swapped is not None else np.inf) + 1.0
        )
        after = wait_ready(url, timeout=120, version=reload_version)
        time.sleep(2.0)  # the old version is freed once its last request is done
        rss_after = _rss(server.pid)
        metrics = httpx.get(f"{url}/metrics", timeout=5).text
        reload_seconds = next(
            (
                float(line.split()[-1])
                for line in metrics.splitlines()
                if line.startswith('ebr_serving_last_reload_seconds{kind="indexes/stories"}')
            ),
            None,
        )
    finally:
        stop_process(server, 60)
    return {
        "searcher": mode,
        "saturation_closed_loop": saturation,
        "saturation_closed_loop_wrk": saturation_wrk,
        "steady_fixed_rate": {"offered_rate": args.rate, **steady},
        "reload_fixed_rate": {
            "offered_rate": args.rate,
            "whole_phase": summarize(rows),
            "reload_window": summarize(rows, window),
            "window_seconds": round(swapped - publish_at[0], 2) if swapped is not None else None,
            "served_after": after["served"]["components"][STORY_INDEX]["version"],
            "server_reload_seconds": reload_seconds,
        },
        "memory": {
            "loaded_index_memory_bytes": component["memory_bytes"],
            "index_process_rss_bytes": component.get("searcher_rss_bytes"),
            "server_tree_rss_loaded": rss_loaded,
            "server_tree_rss_peak_during_reload": peak_rss[0],
            "server_tree_rss_after_reload": rss_after,
            "first_load_seconds": round(first_load_s, 1),
        },
    }


def process_tree_cpu_s(pid: int) -> tuple[float, dict[int, float]]:
    """CPU seconds (user + system) so far of process `pid`, and of each of its descendants
    by pid (a server's index processes and forkserver); one that exits meanwhile is left out.
    router.py's per-process CPU reads it too."""
    import psutil

    root = psutil.Process(pid)
    children = {}
    for child in root.children(recursive=True):
        try:
            children[child.pid] = sum(child.cpu_times()[:2])
        except psutil.Error:
            continue
    return sum(root.cpu_times()[:2]), children


def cpu_budget(before: tuple[float, dict], after: tuple[float, dict], closed_loop: dict) -> dict:
    """Where a closed loop's CPU went, per request: the server process, its child processes
    (the index process searches; the forkserver idles) and the load generator; how busy the
    busiest child was (cores: one index process searches on one thread, so near 1.0 it is
    the bottleneck); and the ceiling the machine's cores put on served QPS at that CPU per
    request (cores / total), which bounds served/raw whatever overlaps."""
    seconds, requests = closed_loop["duration_s"], max(closed_loop["requests"], 1)
    server = after[0] - before[0]
    children = {pid: cpu - before[1].get(pid, 0.0) for pid, cpu in after[1].items()}
    per_request = {
        "server": 1000 * server / requests,
        "children": 1000 * sum(children.values()) / requests,
        "load_generator": closed_loop["load_generator_cpu_ms_per_request"],
    }
    total = sum(per_request.values())
    cores = os.cpu_count() or 1
    return {
        "ms_per_request": {name: round(ms, 4) for name, ms in per_request.items()},
        "total_ms_per_request": round(total, 4),
        "server_cores": round(server / seconds, 2),
        "busiest_child_cores": round(max(children.values(), default=0.0) / seconds, 2),
        "cores_busy": round(total * closed_loop["qps"] / 1000, 2),
        "cpu_ceiling_qps": round(1000 * cores / total) if total else None,
    }


def targets(mode: dict, raw: dict) -> dict:
    """Issue 6's targets for one searcher mode, judged by benchmarks/targets.py."""
    steady, saturation, reload = mode["steady_fixed_rate"], mode["saturation_closed_loop"], mode["reload_fixed_rate"]
    window, whole = reload["reload_window"], reload["whole_phase"]
    ratio = saturation["qps"] / raw["qps"]
    failed = failed_requests(saturation, steady, reload)
    return {
        "p99_le_10ms_at_1000qps": {
            "p99_ms": steady["p99_ms"],
            "achieved_qps": steady["qps"],
            "met": steady_p99_met(steady),
        },
        "served_over_raw_ge_0.3": {"ratio": round(ratio, 3), "met": served_over_raw_met(saturation["qps"], raw["qps"])},
        "reload_p99_le_2x_steady": {
            "reload_window_p99_ms": window.get("p99_ms"),
            "whole_phase_p99_ms": whole.get("p99_ms"),
            "ratio_window": round(window.get("p99_ms", float("nan")) / steady["p99_ms"], 2),
            "met": reload_met(reload, steady),
        },
        "zero_failed_requests": {"failed": failed, "met": failed == 0},
    }


def repeat_summary(mode: dict, raw: dict) -> dict:
    """One repeat's figures for one searcher: the ratios its targets are judged on. The
    served/raw rule reads wrk's closed loop where it ran (see `repeat_spread`)."""
    steady, saturation, reload = mode["steady_fixed_rate"], mode["saturation_closed_loop"], mode["reload_fixed_rate"]
    wrk = mode.get("saturation_closed_loop_wrk")
    budget = (wrk or {}).get("service_cpu")
    window, swapped = reload_p99(reload)
    window = window if swapped else None  # no reload served: the rule cannot be met
    return {
        "saturated_qps": saturation["qps"],
        "served_over_raw": round(saturation["qps"] / raw["qps"], 3),
        "saturated_qps_wrk": wrk["qps"] if wrk else None,
        "served_over_raw_wrk": round(wrk["qps"] / raw["qps"], 3) if wrk else None,
        "steady_p99_ms": steady["p99_ms"],
        "reload_window_p99_ms": window,
        "reload_over_steady": None if window is None else round(window / steady["p99_ms"], 2),
        "failed": failed_requests(saturation, steady, reload) + (wrk["failed"] if wrk else 0),
        "cpu_ms_per_request_wrk": budget["total_ms_per_request"] if budget else None,
        "index_process_cores_wrk": budget["busiest_child_cores"] if budget else None,
        "cpu_ceiling_over_raw_wrk": round(budget["cpu_ceiling_qps"] / raw["qps"], 3) if budget else None,
    }


def repeat_spread(repeats: list[dict]) -> dict:
    """Per searcher: each figure's values over the repeats, median, min and max, and issue
    #14's rule for the single service: served QPS >= 0.8 x raw and reload p99 <= 2 x steady
    in every repeat, with no failed request. Served QPS is wrk's closed loop where every
    repeat ran it (the load generator taking least of the two cores the service and raw
    hnswlib share), else loadgen.py's; `judged_on` says which."""
    out = {}
    for mode in repeats[0]["searchers"]:
        rows = [r["searchers"][mode] for r in repeats]
        figures = {}
        for key in (
            "served_over_raw",
            "served_over_raw_wrk",
            "reload_over_steady",
            "saturated_qps",
            "saturated_qps_wrk",
            "steady_p99_ms",
        ):
            values = [row[key] for row in rows if row.get(key) is not None]
            figures[key] = {
                "values": values,
                "median": float(np.median(values)) if values else None,
                "min": min(values, default=None),
                "max": max(values, default=None),
            }
        judged_on = "wrk" if all(row.get("served_over_raw_wrk") is not None for row in rows) else "loadgen.py"
        served = "served_over_raw_wrk" if judged_on == "wrk" else "served_over_raw"
        kept = [single_service_run_met(row[served], row["reload_over_steady"], row["failed"]) for row in rows]
        out[mode] = {
            **figures,
            "failed": [row["failed"] for row in rows],
            "judged_on": judged_on,
            "runs_meeting_0.8x_raw_and_2x_reload": f"{sum(kept)} of {len(kept)}",
            "met_in_every_run": all(kept),
        }
    return out


def run(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000, help="stories in the index")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rate", type=float, default=1000.0, help="fixed request rate of the steady and reload phases")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per load phase")
    parser.add_argument("--raw-seconds", type=float, default=5.0, help="seconds of raw hnswlib queries")
    parser.add_argument(
        "--min-recall",
        type=float,
        help="index.min_recall_at_10 for the build (default: config's 0.98); "
        "the served ef is the first that reaches it",
    )
    parser.add_argument("--searchers", default="process,inline", help="serving.searcher modes to measure, in order")
    parser.add_argument("--workdir", type=Path, help="keep (and reuse) the store here; default: a temporary directory")
    parser.add_argument(
        "--cache-dir",
        type=Path,
        help="the service's download cache; default: a temporary "
        "directory in /dev/shm (tmpfs) if there is one, else in the workdir",
    )
    parser.add_argument(
        "--note", default="", help="free text stored with the results (e.g. what else ran on the machine)"
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="measure raw hnswlib and every searcher this many times in a row (same index); the "
        "report gives each repeat's ratios, their median and range, and the last repeat in full",
    )
    parser.add_argument(
        "--no-wrk",
        dest="wrk",
        action="store_false",
        help="skip the closed loop driven by wrk (run when `wrk` is installed: apt-get install wrk)",
    )
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "serving.json")
    args = parser.parse_args(argv)
    if args.wrk and wrk_path() is None:
        print("wrk is not installed (apt-get install wrk): saturation with loadgen.py only", flush=True)
        args.wrk = False
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")

    load_at_start = os.getloadavg()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="ebr-bench-serving-")).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    root = f"file://{workdir}/root"
    own_cache = args.cache_dir is None
    if own_cache:
        shm = Path("/dev/shm")
        args.cache_dir = Path(tempfile.mkdtemp(prefix="ebr-bench-serving-cache-", dir=shm if shm.is_dir() else workdir))
    args.cache_dir = args.cache_dir.resolve()
    try:
        print(f"building: {args.n:,} stories x {args.dim}, {args.users:,} users ...", flush=True)
        store, base_version, build_s, user_vectors = build_store(root, args.n, args.dim, args.users, args.min_recall)
        manifest = store.kind(STORY_INDEX).manifest(base_version)
        ef = int(manifest.params["ef_search"])
        # The built files where the store keeps them (its attempt folder, through the
        # manifest): the root is on this machine, so nothing is copied.
        source_dir = store.kind(STORY_INDEX).local_dir(base_version)
        repeats = []
        for repeat in range(1, args.repeats + 1):
            print(f"raw hnswlib, single thread ... (repeat {repeat} of {args.repeats})", flush=True)
            raw = raw_hnswlib_qps(source_dir, args.dim, ef, user_vectors[:5000], args.raw_seconds)
            modes = [
                measure_searcher(mode, args, store, root, workdir, base_version, source_dir)
                for mode in args.searchers.split(",")
            ]
            repeats.append(
                {
                    "repeat": repeat,
                    "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
                    "raw_qps": raw["qps"],
                    "searchers": {m["searcher"]: repeat_summary(m, raw) for m in modes},
                }
            )
    finally:
        if own_cache:
            shutil.rmtree(args.cache_dir, ignore_errors=True)
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)

    report = {
        "benchmark": "serving",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "python benchmarks/serving.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_average_at_start": [round(x, 2) for x in load_at_start],
            "note": "server, load generator and raw hnswlib on the same machine"
            + (f"; {args.note}" if args.note else ""),
        },
        "data": {
            "stories": args.n,
            "dim": args.dim,
            "users": args.users,
            "k": K,
            "concurrency": args.concurrency,
            "service_cache_dir": str(args.cache_dir),
        },
        "index": {
            "version": base_version,
            "M": manifest.params.get("M"),
            "ef_construction": manifest.params.get("ef_construction"),
            "ef_search": ef,
            "recall_at_10": manifest.metrics.get("recall_at_10"),
            "build_seconds": round(build_s, 1) if build_s is not None else "reused from an earlier run",
        },
        "raw_hnswlib_single_thread": raw,
        "searchers": {m["searcher"]: {**m, "targets": targets(m, raw)} for m in modes},
        "repeats": repeats,
        "repeat_spread": repeat_spread(repeats),
    }
    markdown = to_markdown(report)
    print(markdown)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown + "\n")
    return report


def to_markdown(r: dict) -> str:
    raw = r["raw_hnswlib_single_thread"]
    mib = 1024 * 1024
    lines = [
        f"Serving benchmark: {r['data']['stories']:,} stories x {r['data']['dim']}, {r['data']['users']:,} users, k={r['data']['k']}, "
        f"concurrency {r['data']['concurrency']}; HNSW M={r['index']['M']}, ef_construction={r['index']['ef_construction']}, "
        f"ef_search={r['index']['ef_search']}, recall@10 {r['index']['recall_at_10']}; {r['machine']['cpus']} CPUs, "
        f"load average at start {r['machine']['load_average_at_start'][0]}; {r['machine']['note']}; "
        f"service cache in {r['data'].get('service_cache_dir', 'the workdir')}",
        "",
        "| searcher | measurement | requests | failed | QPS | p50 ms | p99 ms | p99.9 ms | max ms |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| | raw hnswlib, 1 thread, 1 query at a time | | | {raw['qps']:,.0f} | {raw['p50_ms']} | {raw['p99_ms']} | | |",
    ]
    for mode, m in r["searchers"].items():
        reload = m["reload_fixed_rate"]
        sat, wrk = m["saturation_closed_loop"], m.get("saturation_closed_loop_wrk")
        saturations = [
            (f"closed loop (saturation), loadgen.py {sat.get('load_generator_cpu_ms_per_request')} CPU ms/req", sat)
        ]
        if wrk:
            saturations.append(
                (f"closed loop (saturation), wrk {wrk['load_generator_cpu_ms_per_request']} CPU ms/req", wrk)
            )
        for label, row in (
            *saturations,
            (f"fixed {m['steady_fixed_rate']['offered_rate']:.0f}/s, steady", m["steady_fixed_rate"]),
            ("fixed rate, whole reload phase", reload["whole_phase"]),
            (f"fixed rate, reload window ({reload['window_seconds']} s)", reload["reload_window"]),
        ):
            lines.append(
                f"| {mode} | {label} | {row.get('requests', 0):,} | {row.get('failed', 0)} | {row.get('qps', 0):,.0f} | "
                f"{row.get('p50_ms')} | {row.get('p99_ms')} | {row.get('p999_ms')} | {row.get('max_ms')} |"
            )
    for mode, m in r["searchers"].items():
        budget = (m.get("saturation_closed_loop_wrk") or {}).get("service_cpu")
        if budget:
            lines.append("\n" + _cpu_budget_line(mode, budget, raw["qps"]))
    lines += [
        "",
        "| searcher | LoadedIndex.memory_bytes | index process RSS | server RSS (with children) loaded / peak in reload / after | reload s | first load s |",
        "|---|---|---|---|---|---|",
    ]
    for mode, m in r["searchers"].items():
        mem = m["memory"]
        child = f"{mem['index_process_rss_bytes'] / mib:,.0f} MiB" if mem["index_process_rss_bytes"] else ""
        lines.append(
            f"| {mode} | {mem['loaded_index_memory_bytes'] / mib:,.0f} MiB | {child} | {mem['server_tree_rss_loaded'] / mib:,.0f} / "
            f"{mem['server_tree_rss_peak_during_reload'] / mib:,.0f} / {mem['server_tree_rss_after_reload'] / mib:,.0f} MiB | "
            f"{m['reload_fixed_rate']['server_reload_seconds']:.2f} | {mem['first_load_seconds']} |"
        )
    lines += [
        f"\nRaw hnswlib load: {raw['load_seconds']} s, RSS delta {raw['rss_delta_bytes'] / mib:,.0f} MiB. "
        f"Index build: {r['index']['build_seconds']}"
        + (" s." if isinstance(r["index"]["build_seconds"], (int, float)) else "."),
        "",
        "| searcher | p99 <= 10 ms at >= 1000 req/s | served QPS >= 0.3 x raw | reload p99 <= 2 x steady | zero failed |",
        "|---|---|---|---|---|",
    ]
    for mode, m in r["searchers"].items():
        t = m["targets"]
        lines.append(
            f"| {mode} | p99 {t['p99_le_10ms_at_1000qps']['p99_ms']} ms at {t['p99_le_10ms_at_1000qps']['achieved_qps']:,.0f}/s: "
            f"{_yes(t['p99_le_10ms_at_1000qps']['met'])} | {t['served_over_raw_ge_0.3']['ratio']}: {_yes(t['served_over_raw_ge_0.3']['met'])} | "
            f"{t['reload_p99_le_2x_steady']['reload_window_p99_ms']} ms ({t['reload_p99_le_2x_steady']['ratio_window']}x): "
            f"{_yes(t['reload_p99_le_2x_steady']['met'])} | {t['zero_failed_requests']['failed']}: {_yes(t['zero_failed_requests']['met'])} |"
        )
    return "\n".join(lines + _repeats_markdown(r))


def _repeats_markdown(r: dict) -> list[str]:
    if len(r.get("repeats", [])) < 2:
        return []
    lines = [
        "",
        f"Repeats ({len(r['repeats'])}, in a row, same index; issue #14's rule: served QPS >= "
        f"{SERVED_OVER_RAW_EVERY_RUN} x raw and reload p99 <= {RELOAD_P99_OVER_STEADY} x steady in every run):",
        "",
        "| repeat | load at start | raw QPS | searcher | served QPS (loadgen.py) | served / raw | served QPS (wrk) "
        "| wrk / raw | CPU ms/req (wrk loop) | index process cores | CPU ceiling / raw "
        "| steady p99 ms | reload window p99 ms | reload / steady | failed |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for rep in r["repeats"]:
        for mode, m in rep["searchers"].items():
            wrk_qps = f"{m['saturated_qps_wrk']:,.0f}" if m.get("saturated_qps_wrk") is not None else ""
            lines.append(
                f"| {rep['repeat']} | {rep['load_average_at_start'][0]} | {rep['raw_qps']:,.0f} | {mode} | "
                f"{m['saturated_qps']:,.0f} | {m['served_over_raw']} | {wrk_qps} | {m.get('served_over_raw_wrk') or ''} | "
                f"{_blank(m.get('cpu_ms_per_request_wrk'))} | {_blank(m.get('index_process_cores_wrk'))} | "
                f"{_blank(m.get('cpu_ceiling_over_raw_wrk'))} | {m['steady_p99_ms']} | {m['reload_window_p99_ms']} | {m['reload_over_steady']} | {m['failed']} |"
            )
    lines += [
        "",
        "| searcher | served / raw, loadgen.py: median (range) | served / raw, wrk: median (range) "
        "| reload / steady: median (range) | runs meeting both (served read from) |",
        "|---|---|---|---|---|",
    ]
    for mode, spread in r["repeat_spread"].items():
        a, w, b = spread["served_over_raw"], spread["served_over_raw_wrk"], spread["reload_over_steady"]
        wrk = f"{w['median']:.3f} ({w['min']}-{w['max']})" if w["values"] else "not run"
        lines.append(
            f"| {mode} | {a['median']:.3f} ({a['min']}-{a['max']}) | {wrk} | "
            f"{b['median']:.2f} ({b['min']}-{b['max']}) | {spread['runs_meeting_0.8x_raw_and_2x_reload']} "
            f"({spread['judged_on']}) |"
        )
    return lines


def _cpu_budget_line(mode: str, budget: dict, raw_qps: float) -> str:
    ms = budget["ms_per_request"]
    ceiling = budget["cpu_ceiling_qps"]
    return (
        f"{mode}, wrk's closed loop: CPU per request {ms['server']} ms server + {ms['children']} ms index process "
        f"+ {ms['load_generator']} ms wrk = {budget['total_ms_per_request']} ms; {budget['cores_busy']} of "
        f"{os.cpu_count()} cores busy, the index process {budget['busiest_child_cores']} (one search thread), "
        f"the server {budget['server_cores']}; at that CPU per request the cores allow at most {ceiling:,} QPS "
        f"({ceiling / raw_qps:.2f} x raw)."
    )


def _blank(value) -> str:
    return "" if value is None else str(value)


def _yes(met: bool) -> str:
    return "yes" if met else "**no**"


if __name__ == "__main__":
    run()
