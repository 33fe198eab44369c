"""Closed-loop saturation with wrk, a load generator in C, beside benchmarks/loadgen.py's.

The benchmarks' own load generator (asyncio, one process) costs 0.15-0.2 ms of CPU per
request: as much as a search at 200k stories, taken from the same two cores the service
is measured on, and its connections, all in one event loop, tend to send in step. wrk (Debian's `wrk` 4.1: epoll, one thread here, the requests built once
by the Lua script below) costs a fraction of that, so its closed loop shows what the
service serves when the load generator takes little of the machine. Both run in the same
benchmark; which one a target reads is said where the target is judged.

    run_wrk(port, duration=8, concurrency=16, users=50_000, seed=1)

Each request is POST /v1/retrieve/stories for a random known user ("u<i>", i < users),
k = 10, on one of `concurrency` keep-alive connections, as loadgen.py sends them.
"""

from __future__ import annotations

import json
import resource
import shutil
import subprocess
import tempfile
from pathlib import Path

K = 10
DISTINCT_REQUESTS = 4096  # built once by the script; the connections cycle through them

SCRIPT = """
local users, k = $users, $k
math.randomseed($seed)
local requests = {}
for i = 1, $distinct do
  local body = string.format('{"user_id":"u%d","k":%d}', math.random(0, users - 1), k)
  requests[i] = wrk.format("POST", "/v1/retrieve/stories", {["Content-Type"] = "application/json"}, body)
end
local i = 0
request = function()
  i = i % #requests + 1
  return requests[i]
end
done = function(summary, latency, _)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests":%d,"duration_us":%d,"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d,' ..
    '"p50_us":%d,"p99_us":%d,"max_us":%d}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.max))
end
"""


def wrk_path() -> str | None:
    """The wrk executable, or None (`apt-get install wrk` gives it)."""
    return shutil.which("wrk")


def run_wrk(port: int, *, duration: float, concurrency: int, users: int, seed: int = 1) -> dict:
    """A closed loop of `concurrency` connections for `duration` seconds; QPS, failures
    (non-2xx answers and socket errors), latency percentiles and wrk's own CPU per request."""
    if users < 1 or concurrency < 1 or duration < 1:
        raise ValueError(
            f"users, concurrency and duration (s) must be at least 1, not {users}, {concurrency}, {duration}"
        )
    wrk = wrk_path()
    if wrk is None:
        raise FileNotFoundError("wrk is not installed (apt-get install wrk, or `make wrk`)")
    script = SCRIPT
    for name, value in (("users", users), ("k", K), ("seed", seed), ("distinct", DISTINCT_REQUESTS)):
        script = script.replace(f"${name}", str(int(value)))
    with tempfile.TemporaryDirectory(prefix="ebr-wrk-") as folder:
        path = Path(folder) / "retrieve.lua"
        path.write_text(script)
        before = children_cpu_s()
        done = subprocess.run(
            [
                wrk,
                "-t1",
                f"-c{concurrency}",
                f"-d{max(1, round(duration))}s",
                "-s",
                str(path),
                f"http://127.0.0.1:{port}",
            ],
            capture_output=True,
            text=True,
            timeout=duration + 60,
        )
        cpu_s = children_cpu_s() - before
    line = next((line for line in done.stdout.splitlines() if line.startswith("WRK_JSON ")), None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed (exit {done.returncode}): {done.stderr.strip() or done.stdout.strip()}")
    figures = json.loads(line.removeprefix("WRK_JSON "))
    requests, seconds = figures["requests"], figures["duration_us"] / 1e6
    failed = sum(figures[key] for key in ("connect", "read", "write", "status", "timeout"))
    return {
        "tool": "wrk",
        "requests": requests,
        "failed": failed,
        "qps": round(requests / seconds, 1),
        "duration_s": round(seconds, 3),
        "p50_ms": round(figures["p50_us"] / 1000, 3),
        "p99_ms": round(figures["p99_us"] / 1000, 3),
        "max_ms": round(figures["max_us"] / 1000, 3),
        "load_generator_cpu_ms_per_request": round(1000 * cpu_s / max(requests, 1), 4),
    }


def children_cpu_s() -> float:
    """User + system CPU seconds of this process's waited-for children so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime
