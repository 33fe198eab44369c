"""The retrieval tier the demo starts at its end, and stops: one service, or shards behind a router.

    with RetrievalTier(env, logs, shards=2) as tier:
        ...  # ask tier.url: the same API either way

With `shards=1` (the demo's default) it is one `ebr serve`; with S > 1 it is S shard
servers (`ebr serve --shard I/S`, shard I of every shard set the DAGs published with
`index.shards = S`) and `ebr route` over them (`--replicas`: one replica per shard).
Every process binds a free port of 127.0.0.1, writes its log to `logs/<name>.log`, and
runs in a session of its own, so the Ctrl-C a terminal sends the demo's process group
reaches only the demo, which then stops them (`stop`: SIGTERM to each server, then to
whatever is left of its session, SIGKILL after a grace period). Entering waits until the URL answers `/readyz` with 200 (for the
router: a shard set pinned, every shard held by a healthy replica, user embeddings of
its model loaded); a process that exits meanwhile, or a tier not ready in time, stops
everything started and raises `TierError` with the log to read. Whatever ends the block
(its end, an exception, KeyboardInterrupt) stops every process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from config.loopback import free_ports

BIN = Path(sys.executable).parent
READY_TIMEOUT_S = 180.0  # first start on a busy 2-core machine: imports, downloads, index loads
STOP_GRACE_S = 20.0


class TierError(SystemExit):
    """A process of the tier exited, or the tier was not ready in time (the message says which log)."""


@dataclass
class TierProcess:
    name: str  # "serve", "shard-0-of-2", "route"
    url: str
    process: subprocess.Popen
    log: Path

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


class RetrievalTier:
    """`ebr serve`, or S `ebr serve --shard I/S` and `ebr route`, on loopback for a `with` block.

    `env` is the processes' environment (`EBR_ROOT` and the pipeline's `EBR_*`); `url`
    is what to query; `processes` lists what was started, the router last.
    """

    def __init__(self, env: dict[str, str], logs: Path, shards: int = 1, *, ready_timeout: float = READY_TIMEOUT_S):
        if shards < 1:
            raise ValueError(f"shards must be 1 or more, not {shards}")
        self.env, self.logs, self.shards, self.ready_timeout = env, Path(logs), shards, ready_timeout
        self.processes: list[TierProcess] = []
        self.url = ""

    @property
    def sharded(self) -> bool:
        return self.shards > 1

    @property
    def title(self) -> str:
        if self.sharded:
            return (
                f"{self.shards} shard servers (ebr serve --shard I/{self.shards}) and the router over them (ebr route)"
            )
        return "the retrieval service (ebr serve)"

    def __enter__(self) -> RetrievalTier:
        try:
            self.start()
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        if not self.sharded:
            self.url = self._spawn("serve", ["serve"], free_ports(1)[0]).url
            return
        *ports, router_port = free_ports(self.shards + 1)  # held together: all different
        replicas = [
            [self._spawn(f"shard-{shard}-of-{self.shards}", ["serve", "--shard", f"{shard}/{self.shards}"], port).url]
            for shard, port in enumerate(ports)
        ]
        self.url = self._spawn("route", ["route", "--replicas", json.dumps(replicas)], router_port).url

    def _spawn(self, name: str, command: list[str], port: int) -> TierProcess:
        log = self.logs / f"{name}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [str(BIN / "ebr"), *command, "--port", str(port)],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: the terminal's Ctrl-C is the demo's to handle
            )
        started = TierProcess(name, f"http://127.0.0.1:{port}", process, log)
        self.processes.append(started)
        return started

    def wait_ready(self) -> None:
        """Until `url` answers /readyz with 200; TierError when a process exits or time runs out."""
        deadline = time.monotonic() + self.ready_timeout
        reason = "no answer yet"
        while time.monotonic() < deadline:
            for started in self.processes:
                if started.process.poll() is not None:
                    raise TierError(
                        f"ebr {started.name} exited with {started.process.returncode}; its log ({started.log}) ends:\n"
                        f"{started.log_tail()}"
                    )
            try:
                with urllib.request.urlopen(f"{self.url}/readyz", timeout=2) as response:
                    if response.status == 200:
                        return
            except urllib.error.HTTPError as err:  # 503 with the reason: still loading
                reason = err.read().decode(errors="replace")[:500]
            except OSError as err:
                reason = str(err)
            time.sleep(0.5)
        logs = ", ".join(str(p.log) for p in self.processes)
        raise TierError(f"{self.url} was not ready within {self.ready_timeout:.0f} s ({reason}); logs: {logs}")

    def stop(self) -> None:
        """Stops every process started (the router first), and then whatever is left of
        its session (a server's index processes), even when the server itself had exited.

        SIGTERM goes to each server alone first: it shuts its index processes down itself
        (signalled together, a server would see them die and start new ones meanwhile).
        """
        for started in reversed(self.processes):
            if started.process.poll() is None:
                started.process.terminate()
        for started in reversed(self.processes):
            try:
                started.process.wait(timeout=STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                _signal_session(started.process.pid, signal.SIGKILL)
                started.process.wait()
            _end_session(started.process.pid)

    def describe(self) -> str:
        """What runs where, one line a process, for the console."""
        return "\n".join(f"  {p.name:<14} {p.url}  (log: {p.log})" for p in self.processes)


def tier_commands(root: str, shards: int, router_port: int = 8091, first_port: int = 8101) -> str:
    """The shell lines that start the sharded tier on `root` by hand: the shard servers in
    the background (ports from `first_port`), then the router over them."""
    ebr = f".venv/bin/ebr --root {root}"
    ports = [first_port + shard for shard in range(shards)]
    servers = "\n".join(f"    {ebr} serve --shard {shard}/{shards} --port {p} &" for shard, p in enumerate(ports))
    replicas = json.dumps([[f"http://127.0.0.1:{p}"] for p in ports], separators=(",", ":"))
    jobs = " ".join(f"%{n}" for n in range(1, shards + 1))
    return f"""{servers}
    {ebr} route --port {router_port} --replicas '{replicas}'    # Ctrl-C stops it; then `kill {jobs}`"""


def _signal_session(pid: int, signum: int) -> bool:
    """Signals the process group `pid` leads (its session: the process and what it
    started); False when nothing of it is left."""
    try:
        os.killpg(pid, signum)
        return True
    except ProcessLookupError:
        return False


def _end_session(pid: int) -> None:
    """Waits for what is left of a stopped server's session to exit: a moment on its own
    (a server's index processes end with it), then after SIGTERM, then after SIGKILL."""
    for signum, patience in ((0, 2.0), (signal.SIGTERM, STOP_GRACE_S), (signal.SIGKILL, 2.0)):
        if not _signal_session(pid, signum):  # signal 0: only whether any is left
            return
        deadline = time.monotonic() + patience
        while time.monotonic() < deadline:
            time.sleep(0.1)
            if not _signal_session(pid, 0):
                return
