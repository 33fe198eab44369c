"""Soak test of the retrieval service: steady load for minutes under a seeded random fault schedule.

    python benchmarks/soak.py [--minutes 10] [--n 200000] [--users 50000] [--seed 0] [--poll-interval 1]

1. The story index and user embeddings come from benchmarks/serving.py's `build_store`
   (built once in --workdir/build and reused). The soak runs on a fresh store of its own
   (--workdir/run-<time>/root, removed at the end): the built index and the users are
   published there as model 1.
2. `ebr serve` in its own process (serving.searcher=process, its cache in /dev/shm) and a
   load generator in another (benchmarks/loadgen.py): `--rate` requests/s over
   `--concurrency` keep-alive connections, each a random known user, k=10, latency from
   the scheduled send time; it records every answer's status, error code and the
   (index, user embeddings, model) it names, and samples /readyz every 100 ms on a
   connection of its own.
3. Meanwhile, every `--fault-every` seconds (jittered), the next fault of a round that
   holds each of these once (publish and kill twice), shuffled with `--seed`:
     publish   a byte-identical copy of the index under a new version name (same model)
     rollback  LATEST back to an earlier good version of the served model
     corrupt   a copy with one byte flipped after its manifest was written (refused)
     crash     a copy whose graph verifies but crashes hnswlib (SIGSEGV): retried with
               backoff, refused after serving.max_load_crashes
     rollout   users of a new model first (the service waits, the old pair serves), the
               index of that model a few polls later (the pair switches)
     kill      SIGKILL of the story index process (restarted from the local cache)
     retention a corrupt version published (refused), then `retain(keep=1)`, which
               deletes the served version, then a kill: the restart must come from the cache
   After each fault the scheduler checks what the service must do and when (served
   version, refusal, readiness), within poll interval + load time + `--slack`.
4. From the load generator's records: requests sent and failed; failures outside the
   documented windows (a kill's restart: poll interval + load time + slack after it);
   every answer's pair (index and user embeddings of the model it names); the 503
   seconds and the longest outage (from the first failed answer to the next good one),
   each outage against its kill's bound: one poll interval plus that restart's load time
   as the service timed it (+0.1 s of measurement granularity); /readyz saying 503
   during every outage longer than its sampling interval.

Exits non-zero when an invariant broke. Writes benchmarks/results/soak.json and soak.md
(or --out); the JSON records the CPU count and the load average at the start and end.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
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
# The load generator runs in its own process: benchmarks/loadgen.py soak.
from artifacts.kinds import STORY_INDEX, USER_EMBEDDINGS  # noqa: E402
from benchmarks import loadgen as load_generator  # noqa: E402
from benchmarks.soak_faults import Scheduler, Service, SoakStore, prepare  # noqa: E402

K = 10
# Outages are measured between answers' arrival times, 1/rate apart per connection.
TIMING_TOLERANCE_S = 0.1


def bench_serving():
    """benchmarks/serving.py (build_store, copy_version, wait_ready, ...)."""
    from benchmarks import serving

    return serving


# -- the analysis --------------------------------------------------------------------------------


def analyse(rows: dict, soak: SoakStore, scheduler: Scheduler, t_start: float) -> dict:
    # When each answer arrived (the load generator records the scheduled send time and the
    # latency from it): a failure belongs to the window it happened in, not the one in which
    # a late request was due.
    order = np.argsort(rows["start"] + rows["latency"], kind="stable")
    rows = {
        key: (value[order] if len(value) == len(order) and not key.startswith("readyz") else value)
        for key, value in rows.items()
    }
    start, status, code = rows["start"] + rows["latency"], rows["status"], rows["code"]
    ok = status == 200
    # Every answer: the index and user embeddings it names come from the model it names.
    models = soak.models
    mixed = 0
    bad_served = 0
    for index, users, model in {
        (i, u, m)
        for i, u, m in zip(rows["index_version"][ok], rows["users_version"][ok], rows["model_version"][ok], strict=True)
    }:
        if not (models.get((STORY_INDEX, index)) == models.get((USER_EMBEDDINGS, users)) == model):
            mixed += int(((rows["index_version"] == index) & (rows["users_version"] == users) & ok).sum())
        if index in soak.bad:
            bad_served += int(((rows["index_version"] == index) & ok).sum())
    in_window = np.zeros(len(start), dtype=bool)
    for opened, closed in scheduler.kill_windows:
        in_window |= (start >= opened) & (start <= closed)
    failed = ~ok
    outside = failed & ~in_window
    # Outages: from a failed answer to the next good one (in the order they arrived).
    outages: list[tuple[float, float]] = []
    begin = None
    for t, good in zip(start, ok, strict=True):
        if not good and begin is None:
            begin = t
        elif good and begin is not None:
            outages.append((begin, t))
            begin = None
    if begin is not None:
        outages.append((begin, float(start[-1])))
    lengths = [float(b - a) for a, b in outages]
    readyz_at, readyz_status = rows["readyz_at"], rows["readyz_status"]
    unreported = [
        (round(a - t_start, 2), round(b - a, 2))
        for a, b in outages
        if b - a > 2 * load_generator.READYZ_EVERY_S
        and not ((readyz_at >= a) & (readyz_at <= b) & (readyz_status != 200)).any()
    ]
    longest = float(max(lengths, default=0.0))
    # Each outage against the kill that caused it: at most one poll interval (until the
    # reloader looks) plus that restart's load time (as the service timed it).
    poll = scheduler.args.poll_interval
    per_kill = []
    for killed, restart_s in scheduler.restarts:
        mine = [
            float(b - a)
            for a, b in outages
            if killed - TIMING_TOLERANCE_S <= a <= killed + poll + restart_s + scheduler.args.slack
        ]
        allowed = poll + restart_s + TIMING_TOLERANCE_S
        per_kill.append(
            {
                "killed_at_s": round(killed - t_start, 2),
                "outage_s": round(max(mine, default=0.0), 3),
                "restart_load_s": round(restart_s, 3),
                "allowed_s": round(allowed, 3),
                "ok": bool(max(mine, default=0.0) <= allowed),
            }
        )
    unattributed = [
        round(b - a, 3)
        for a, b in outages
        if not any(k - TIMING_TOLERANCE_S <= a <= k + poll + r + scheduler.args.slack for k, r in scheduler.restarts)
    ]
    checks = [c for e in scheduler.events for c in e["checks"]]
    codes = (
        {str(c): int(n) for c, n in zip(*np.unique(code[failed], return_counts=True), strict=True)}
        if failed.any()
        else {}
    )
    invariants = {
        "every answer names one consistent pair": {"broken_answers": mixed, "ok": bool(mixed == 0)},
        "no refused (corrupt / crashing) version answers": {"answers": bad_served, "ok": bool(bad_served == 0)},
        "no failed request outside a kill's restart window": {
            "failed_outside": int(outside.sum()),
            "ok": not bool(outside.any()),
            "first_ones_at_s_status_code": [
                (round(float(start[i]) - t_start, 3), int(status[i]), str(code[i]))
                for i in np.flatnonzero(outside)[:20]
            ],
        },
        "/readyz says 503 during every outage": {
            "unreported_outages_at_s_and_length": unreported,
            "ok": not unreported,
        },
        "longest outage <= poll interval + load time": {
            "longest_s": round(longest, 3),
            "poll_interval_s": poll,
            "max_restart_load_s": round(max((r for _, r in scheduler.restarts), default=0.0), 3),
            "per_kill": per_kill,
            "outages_without_a_kill": unattributed,
            "ok": all(k["ok"] for k in per_kill) and not unattributed,
        },
        "every fault's check": {
            "checks": len(checks),
            "broken": [c for c in checks if not c["ok"]],
            "ok": all(c["ok"] for c in checks),
        },
    }
    span = float(start.max() - start.min()) if len(start) else 0.0
    ms = rows["latency"][ok] * 1000
    return {
        "requests": int(len(start)),
        "answered": int(ok.sum()),
        "failed": int(failed.sum()),
        "failed_by_code": codes,
        "failed_outside_documented_windows": int(outside.sum()),
        "qps": round(len(start) / span, 1) if span else 0.0,
        "p50_ms": round(float(np.percentile(ms, 50)), 3) if len(ms) else None,
        "p99_ms": round(float(np.percentile(ms, 99)), 3) if len(ms) else None,
        "max_ms": round(float(ms.max()), 3) if len(ms) else None,
        "outages": len(outages),
        "seconds_503": round(float(sum(lengths)), 3),
        "longest_outage_s": round(longest, 3),
        "answers_per_pair": {f"{i} + {u} ({m})": int(n) for (i, u, m), n in _pair_counts(rows, ok).items()},
        "invariants": invariants,
        "invariants_broken": [name for name, v in invariants.items() if not v["ok"]],
    }


def _pair_counts(rows: dict, ok: np.ndarray) -> dict[tuple[str, str, str], int]:
    counts: dict[tuple[str, str, str], int] = {}
    for triple in zip(rows["index_version"][ok], rows["users_version"][ok], rows["model_version"][ok], strict=True):
        counts[triple] = counts.get(triple, 0) + 1
    return counts


# -- the run -------------------------------------------------------------------------------------


def run(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0, help="how long the load and the faults run")
    parser.add_argument("--n", type=int, default=200_000, help="stories in the index")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--users", type=int, default=50_000)
    parser.add_argument("--seed", type=int, default=0, help="seeds the fault schedule and the load")
    parser.add_argument("--rate", type=float, default=300.0, help="requests per second (fixed rate)")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--poll-interval", type=float, default=1.0, help="the service's serving.poll_interval_s")
    parser.add_argument("--fault-every", type=float, default=20.0, help="mean seconds between faults")
    parser.add_argument("--max-load-crashes", type=int, default=3, help="serving.max_load_crashes")
    parser.add_argument("--load-backoff", type=float, default=1.0, help="serving.load_retry_backoff_s")
    parser.add_argument(
        "--slack",
        type=float,
        default=1.0,
        help="seconds allowed on top of poll interval + load time for each check (a shared machine)",
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=REPO / "var" / "bench" / "soak-work",
        help="keeps the built index (reused by later runs of the same sizes)",
    )
    parser.add_argument("--cache-dir", type=Path, help="the service's cache; default a temporary directory in /dev/shm")
    parser.add_argument("--note", default="", help="free text stored with the results")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "soak.json")
    args = parser.parse_args(argv)

    load_at_start = os.getloadavg()
    workdir = args.workdir.resolve()
    run_dir = workdir / f"run-{datetime.now(UTC):%Y%m%dT%H%M%S}"
    run_dir.mkdir(parents=True)
    shm = Path("/dev/shm")
    cache = (
        Path(tempfile.mkdtemp(prefix="ebr-soak-cache-", dir=shm if shm.is_dir() else run_dir))
        if args.cache_dir is None
        else args.cache_dir
    )
    serving = bench_serving()
    server = loadgen = None
    try:
        print(f"preparing: {args.n:,} stories x {args.dim}, {args.users:,} users ...", flush=True)
        soak = prepare(args, workdir, run_dir)
        port = serving._free_port()
        url = f"http://127.0.0.1:{port}"
        server_log = open(run_dir / "server.log", "w")  # noqa: SIM115 - closed in finally
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "cli.main",
                "--root",
                f"file://{soak.root}",
                "--set",
                f"serving.cache_dir={cache}",
                "--set",
                "serving.searcher=process",
                "--set",
                f"serving.max_load_crashes={args.max_load_crashes}",
                "--set",
                f"serving.load_retry_backoff_s={args.load_backoff}",
                "serve",
                "--port",
                str(port),
                "--poll-interval",
                str(args.poll_interval),
            ],
            cwd=REPO,
            env={**os.environ, "TF_USE_LEGACY_KERAS": "1"},
            stdout=server_log,
            stderr=subprocess.STDOUT,
        )
        serving.wait_ready(url, timeout=600)
        duration = args.minutes * 60
        rows_path = run_dir / "loadgen.npz"
        loadgen = subprocess.Popen(
            [
                sys.executable,
                load_generator.__file__,
                "soak",
                f"--port={port}",
                f"--rate={args.rate}",
                f"--duration={duration}",
                f"--concurrency={args.concurrency}",
                f"--users={len(soak.user_ids)}",
                f"--seed={args.seed}",
                f"--out={rows_path}",
            ],
            cwd=REPO,
        )
        t_start = time.monotonic()
        scheduler = Scheduler(soak, Service(url), args, t_start)
        stop = threading.Event()
        print(
            f"soak: {args.minutes:g} min at {args.rate:g} req/s, a fault every ~{args.fault_every:g} s (seed {args.seed})",
            flush=True,
        )
        scheduler.run(t_start + duration, stop)
        loadgen.wait(timeout=duration + 300)
        if loadgen.returncode != 0:
            raise SystemExit(f"the load generator failed (exit code {loadgen.returncode})")
        data = np.load(rows_path)
        rows = {key: data[key] for key in data.files}
        results = analyse(rows, soak, scheduler, t_start)
        log_lines = (run_dir / "server.log").read_text().splitlines()
        server_log = {level: sum(1 for line in log_lines if line.startswith(level)) for level in ("ERROR", "WARNING")}
        server_log["Traceback"] = sum(1 for line in log_lines if line.startswith("Traceback"))
    finally:
        for proc in (loadgen, server):
            if proc is not None:
                serving.stop_process(proc, 60)
        if args.cache_dir is None:
            shutil.rmtree(cache, ignore_errors=True)
        shutil.rmtree(run_dir / "root", ignore_errors=True)

    faults: dict[str, int] = {}
    for event in scheduler.events:
        faults[event["fault"]] = faults.get(event["fault"], 0) + 1
    report = {
        "benchmark": "soak",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "python benchmarks/soak.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_average_at_start": [round(x, 2) for x in load_at_start],
            "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
            "note": "server, load generator and fault scheduler on the same machine"
            + (f"; {args.note}" if args.note else ""),
        },
        "data": {"stories": args.n, "dim": args.dim, "users": args.users, "k": K},
        "setup": {
            "minutes": args.minutes,
            "rate": args.rate,
            "concurrency": args.concurrency,
            "seed": args.seed,
            "poll_interval_s": args.poll_interval,
            "fault_every_s": args.fault_every,
            "slack_s": args.slack,
            "max_load_crashes": args.max_load_crashes,
            "load_retry_backoff_s": args.load_backoff,
            "service_cache_dir": str(cache),
        },
        "faults": faults,
        "results": results,
        "server_log_lines": server_log,  # refusals and restarts; failed requests are rate-limited to one line per 10 s
        "events": scheduler.events,
        "ok": not results["invariants_broken"],
    }
    markdown = to_markdown(report)
    print(markdown)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown + "\n")
    return report


def to_markdown(r: dict) -> str:
    res, setup = r["results"], r["setup"]
    lines = [
        f"Soak: {setup['minutes']:g} min, {r['data']['stories']:,} stories x {r['data']['dim']}, {r['data']['users']:,} users, "
        f"{setup['rate']:g} req/s over {setup['concurrency']} connections, poll {setup['poll_interval_s']:g} s, a fault every "
        f"~{setup['fault_every_s']:g} s (seed {setup['seed']}); {r['machine']['cpus']} CPUs, load average "
        f"{r['machine']['load_average_at_start'][0]} at start, {r['machine']['load_average_at_end'][0]} at end",
        "",
        "Faults: "
        + ", ".join(f"{name} {count}" for name, count in sorted(r["faults"].items()))
        + "; server log lines: "
        + ", ".join(f"{k} {v}" for k, v in r["server_log_lines"].items()),
        "",
        "| requests | failed | failed outside windows | 503 seconds | outages | longest outage s | p50 ms | p99 ms |",
        "|---|---|---|---|---|---|---|---|",
        f"| {res['requests']:,} | {res['failed']:,} | {res['failed_outside_documented_windows']} | {res['seconds_503']} | "
        f"{res['outages']} | {res['longest_outage_s']} | {res['p50_ms']} | {res['p99_ms']} |",
        "",
        "| invariant | holds | figures |",
        "|---|---|---|",
    ]
    for name, v in res["invariants"].items():
        figures = ", ".join(f"{k}={len(v[k]) if k in ('broken', 'per_kill') else v[k]}" for k in v if k != "ok")
        if v.get("per_kill"):
            worst = max(v["per_kill"], key=lambda k: k["outage_s"] - k["allowed_s"])
            figures += f" (closest kill: outage {worst['outage_s']} s of {worst['allowed_s']} s allowed)"
        lines.append(f"| {name} | {'yes' if v['ok'] else '**no**'} | {figures} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(0 if run()["ok"] else 1)
