"""A dask.distributed cluster on this machine: one scheduler and N worker processes.

    python -m beam_jobs.dask_cluster                  # `make dask`: tcp://127.0.0.1:8786, 2 workers
    python -m beam_jobs.dask_cluster --workers 4 --port 0

It runs until Ctrl-C (or SIGTERM), then stops the workers and the scheduler. Point the
jobs at it with `--runner=beam_jobs.dask_runner.DaskRunner
--dask_client_address=tcp://127.0.0.1:8786`, or `embed.runner` and `embed.dask_address`;
a real cluster takes the same flags with its own scheduler's address.

The processes are `dask scheduler` and `dask worker` (each worker under a nanny) from
this environment, so the workers import this project's packages as the jobs do. A real
cluster's workers need the same: this package and requirements.lock installed.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from config.settings import REPO_DIR


class DaskClusterError(RuntimeError):
    """The cluster did not come up; the message says which process and why."""


class LocalDaskCluster:
    """`with LocalDaskCluster() as cluster: cluster.address` (tcp://127.0.0.1:PORT).

    Args:
      workers: worker processes (each with `threads` threads).
      port: the scheduler's port; 0 picks a free one.
      host: the interface every process listens on.
      startup_timeout_s: how long the scheduler and the workers may take to be ready.
    """

    def __init__(
        self,
        workers: int = 2,
        *,
        threads: int = 1,
        port: int = 0,
        host: str = "127.0.0.1",
        startup_timeout_s: float = 60.0,
    ):
        self.workers, self.threads, self.port, self.host = workers, threads, port, host
        self.startup_timeout_s = startup_timeout_s
        self.address: str | None = None
        self._dir: tempfile.TemporaryDirectory | None = None
        self._processes: list[subprocess.Popen] = []

    def __enter__(self) -> LocalDaskCluster:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> str:
        self._dir = tempfile.TemporaryDirectory(prefix="ebr-dask-")
        work = Path(self._dir.name)
        scheduler_file = work / "scheduler.json"
        env = {
            **os.environ,
            "TF_USE_LEGACY_KERAS": "1",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_DIR), os.environ.get("PYTHONPATH")])),
        }
        try:
            self._spawn(
                [
                    "scheduler",
                    "--host",
                    self.host,
                    "--port",
                    str(self.port),
                    "--no-dashboard",
                    "--scheduler-file",
                    str(scheduler_file),
                ],
                work / "scheduler.log",
                env,
            )
            self.address = self._wait_for_scheduler(scheduler_file, work / "scheduler.log")
            for i in range(self.workers):
                self._spawn(
                    [
                        "worker",
                        self.address,
                        "--host",
                        self.host,
                        "--nthreads",
                        str(self.threads),
                        "--nworkers",
                        "1",
                        "--name",
                        f"ebr-worker-{i}",
                        "--no-dashboard",
                        "--local-directory",
                        str(work / f"worker-{i}"),
                    ],
                    work / f"worker-{i}.log",
                    env,
                )
            self._wait_for_workers(work)
        except BaseException:
            self.stop()
            raise
        return self.address

    def _spawn(self, args: list[str], log: Path, env: dict) -> None:
        with open(log, "wb") as out:
            # Own session: a Ctrl-C meant for the caller does not reach the workers before
            # `stop()` stops them in order.
            self._processes.append(
                subprocess.Popen(
                    [sys.executable, "-m", "dask", *args],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    cwd=REPO_DIR,
                    env=env,
                    start_new_session=True,
                )
            )

    def _wait_for_scheduler(self, scheduler_file: Path, log: Path) -> str:
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self._processes[0].poll() is not None:
                raise DaskClusterError(f"the dask scheduler exited with {self._processes[0].returncode}: {_tail(log)}")
            if scheduler_file.exists():
                try:
                    return json.loads(scheduler_file.read_text())["address"]
                except (json.JSONDecodeError, KeyError):
                    pass  # being written
            time.sleep(0.1)
        raise DaskClusterError(f"the dask scheduler did not start within {self.startup_timeout_s:.0f} s: {_tail(log)}")

    def _wait_for_workers(self, work: Path) -> None:
        import dask.distributed as ddist

        with ddist.Client(self.address, timeout=self.startup_timeout_s) as client:
            try:
                client.wait_for_workers(self.workers, timeout=self.startup_timeout_s)
            except (TimeoutError, ddist.TimeoutError):
                logs = "; ".join(f"worker {i}: {_tail(work / f'worker-{i}.log')}" for i in range(self.workers))
                raise DaskClusterError(
                    f"{self.workers} dask workers did not join {self.address} within {self.startup_timeout_s:.0f} s: {logs}"
                ) from None

    def stop(self) -> None:
        """Stops the workers, then the scheduler (SIGTERM, then SIGKILL after 10 s)."""
        for process in reversed(self._processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in reversed(self._processes):
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        self._processes.clear()
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None


def _tail(path: Path, lines: int = 5) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:]) or "(no output)"
    except FileNotFoundError:
        return "(no log)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--threads", type=int, default=1, help="threads per worker (default 1)")
    parser.add_argument("--port", type=int, default=8786, help="scheduler port (default 8786; 0: any free port)")
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    args = parser.parse_args(argv)
    stop = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.append(True))
    with LocalDaskCluster(args.workers, threads=args.threads, port=args.port, host=args.host) as cluster:
        print(f"dask scheduler at {cluster.address} with {args.workers} workers; Ctrl-C stops them.", flush=True)
        print("Run a job on it:", flush=True)
        print(
            f"  .venv/bin/python -m beam_jobs.story_embeddings --runner=beam_jobs.dask_runner.DaskRunner --dask_client_address={cluster.address}",
            flush=True,
        )
        while not stop:
            time.sleep(0.2)
    print("dask cluster stopped.", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
