"""Runs one benchmark script as a subprocess and describes where it ran (machine, git).

A benchmark's own failure (an exit code, a timeout, a missing JSON) is recorded, never
raised: `run_benchmark` returns the record benchmarks/run_all.py stores. Which
benchmarks there are, and with which flags, is run_all's table (BENCHMARKS).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from benchmarks.figures import serving_latency_extract

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Benchmark:
    """One benchmark: a script and its flags for a full and a quick run."""

    name: str
    what: str
    script: str  # path relative to the repository, or "make" for a make target
    full_args: tuple[str, ...]
    quick_args: tuple[str, ...] | None  # None: skipped in --quick
    timeout_s: float  # the run is killed past this and recorded as failed
    quick_timeout_s: float = 120.0
    writes_json: bool = True
    extra: dict = field(default_factory=dict)


def benchmark_command(bench: Benchmark, run_dir: Path, quick: bool, python: str = sys.executable) -> list[str]:
    """The argv that runs `bench`: `python script flags --out RUN_DIR/NAME.json`, or make."""
    args = [a.format(run_dir=run_dir, repo=REPO) for a in (bench.quick_args if quick else bench.full_args)]
    if bench.script == "make":
        return ["make", *args]
    return [python, str(REPO / bench.script), *args, "--out", str(run_dir / f"{bench.name}.json")]


def run_benchmark(bench: Benchmark, run_dir: Path, *, quick: bool, log_dir: Path) -> dict:
    """Runs one benchmark as a subprocess; never raises for the benchmark's own failure.

    Returns {name, command, wall_seconds, returncode, ok, error, results}; stdout and
    stderr go to LOG_DIR/NAME.{out,err}. A run past its timeout is killed (its whole
    process group: servers and load generators it started go with it).
    """
    cmd = benchmark_command(bench, run_dir, quick)
    timeout = bench.quick_timeout_s if quick else bench.timeout_s
    out_json = run_dir / f"{bench.name}.json"
    if bench.writes_json and out_json.exists():
        out_json.unlink()  # a stale file from an earlier run must not pass for this one
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    log_dir.mkdir(parents=True, exist_ok=True)
    stdout_path, stderr_path = log_dir / f"{bench.name}.out", log_dir / f"{bench.name}.err"
    record = {
        "name": bench.name,
        "what": bench.what,
        "command": shell_line(cmd),
        "timeout_seconds": timeout,
        "load_average_before": [round(x, 2) for x in os.getloadavg()],
    }
    log(f"{bench.name}: {record['command']}")
    started = time.perf_counter()
    with open(stdout_path, "w") as out, open(stderr_path, "w") as err:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=err, start_new_session=True)
        try:
            returncode = proc.wait(timeout=timeout)
            timed_out = False
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            returncode, timed_out = proc.returncode, True
    record["wall_seconds"] = round(time.perf_counter() - started, 1)
    record["load_average_after"] = [round(x, 2) for x in os.getloadavg()]  # the 1-minute figure: other work at the end
    record["returncode"] = returncode
    error = None
    if timed_out:
        error = f"killed after the {timeout:.0f} s timeout"
    elif returncode != 0:
        error = f"exit code {returncode}"
    results = None
    if bench.writes_json and error is None:
        try:
            results = json.loads(out_json.read_text())
            record["json"] = relative(out_json)
        except (OSError, json.JSONDecodeError) as exc:
            error = f"exit code 0 but no readable {out_json.name}: {exc}"
    if error is not None:
        record["error"] = error
        record["output_tail"] = tail(stderr_path, 25) or tail(stdout_path, 25)
    record["ok"] = error is None
    record["results"] = results
    if bench.name == "serving" and results is not None and "--workdir" in cmd:
        workdir = Path(cmd[cmd.index("--workdir") + 1])
        record["latency"] = serving_latency_extract(workdir, results)
        if quick:
            shutil.rmtree(workdir, ignore_errors=True)
    if bench.name == "demo" and error is None:
        record["output_tail"] = tail(stdout_path, 60)  # the versions served, above the next steps
    log(f"{bench.name}: {'ok' if record['ok'] else 'FAILED (' + error + ')'} in {record['wall_seconds']} s")
    return record


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        proc.wait()


def machine_info() -> dict:
    """CPU count, memory, Python, platform, load average and the versions that matter."""
    from importlib.metadata import PackageNotFoundError, version

    mem_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gib = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    packages = {}
    for name in (
        "tensorflow",
        "tf-keras",
        "tensorflow-recommenders",
        "apache-beam",
        "hnswlib",
        "faiss-cpu",
        "numpy",
        "implicit",
        "fastapi",
        "uvicorn",
    ):
        try:
            packages[name] = version(name)
        except PackageNotFoundError:
            pass
    return {
        "cpus": os.cpu_count(),
        "memory_gib": mem_gib,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "packages": packages,
    }


def git_state() -> dict:
    """The commit the benchmarks ran from, and whether the checkout had uncommitted changes."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()

    try:
        dirty = [line[3:] for line in git("status", "--porcelain").splitlines() if line.strip()]
        return {
            "commit": git("rev-parse", "HEAD"),
            "branch": git("rev-parse", "--abbrev-ref", "HEAD"),
            "subject": git("log", "-1", "--format=%s"),
            "uncommitted_paths": dirty,
        }
    except (OSError, subprocess.CalledProcessError) as exc:
        return {"commit": None, "error": f"git failed: {exc}"}


def shell_line(cmd: list[str]) -> str:
    import shlex

    shown = [relative(Path(c)) if c.startswith(str(REPO)) else c for c in cmd]
    if shown and shown[0] == sys.executable:
        shown[0] = "python"
    return " ".join(shlex.quote(c) for c in shown)


def relative(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def tail(path: Path, lines: int) -> str:
    try:
        text = path.read_text(errors="replace").rstrip().splitlines()
    except OSError:
        return ""
    return "\n".join(text[-lines:])


def log(message: str) -> None:
    print(f"[{datetime.now(UTC):%H:%M:%S}] {message}", flush=True)
