"""Soak test of the retrieval service: steady load for minutes under a seeded random fault schedule.

    python benchmarks/soak.py [--minutes 10] [--n 200000] [--users 50000] [--seed 0] [--poll-interval 1]

1. The story index and user embeddings come from benchmarks/serving.py's `build_store`
   (built once in --workdir/build and reused). The soak runs on a fresh store of its own
   (--workdir/run-<time>/root, removed at the end): the built index and the users are
   published there as model 1.
2. `ebr serve` in its own process (serving.searcher=process, its cache in /dev/shm) and a
   load generator in another: `--rate` requests/s over `--concurrency` keep-alive
   connections, each a random known user, k=10, latency from the scheduled send time; it
   records every answer's status, error code and the (index, user embeddings, model)
   it names, and samples /readyz every 100 ms on a connection of its own.
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
import asyncio
import json
import os
import platform
import random
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
# As a script, benchmarks/ is sys.path[0]: the checkout replaces it (benchmarks/__init__.py).
sys.path[:] = [str(REPO), *(p for p in sys.path if Path(p or ".").resolve() not in (REPO, REPO / "benchmarks"))]
K = 10
READYZ_EVERY_S = 0.1
# One round of the schedule: every fault at least once, in a seeded random order.
ROUND = ("publish", "publish", "rollback", "corrupt", "crash", "rollout", "kill", "kill", "retention")
# Outages are measured between answers' arrival times, 1/rate apart per connection.
TIMING_TOLERANCE_S = 0.1


def bench_serving():
    """benchmarks/serving.py (build_store, copy_version, wait_ready, _request_bytes, ...)."""
    from benchmarks import serving

    return serving


# -- the load generator (its own process: `soak.py loadgen ...`) -------------------------------


async def _retrieve_loop(port: int, requests: list[bytes], schedule: np.ndarray, stop_at: float, out: list) -> None:
    """One keep-alive connection at fixed times; reconnects after an error (recorded as status 0)."""
    import orjson

    reader = writer = None
    for request, start in zip(requests, schedule, strict=True):
        now = time.monotonic()
        if now >= stop_at:
            break
        if start > now:
            await asyncio.sleep(start - now)
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(request)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
            status = int(head[9:12])
            at = head.lower().find(b"content-length:")
            body = await reader.readexactly(int(head[at + 15 : head.find(b"\r\n", at)]))
            answer = orjson.loads(body)
        except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError) as err:
            out.append((start, time.monotonic() - start, 0, type(err).__name__, "", "", ""))
            if writer is not None:
                writer.close()
            reader = writer = None
            continue
        served = answer.get("served") or {}
        code = "" if status == 200 else (answer.get("error") or {}).get("code", "?")
        out.append(
            (
                start,
                time.monotonic() - start,
                status,
                code,
                served.get("index_version", ""),
                served.get("user_embeddings_version", ""),
                served.get("model_version", ""),
            )
        )
    if writer is not None:
        writer.close()


async def _readyz_loop(port: int, stop_at: float, out: list) -> None:
    request = b"GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    reader = writer = None
    while time.monotonic() < stop_at:
        started = time.monotonic()
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(request)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            at = head.lower().find(b"content-length:")
            await reader.readexactly(int(head[at + 15 : head.find(b"\r\n", at)]))
            out.append((started, int(head[9:12])))
        except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError):
            out.append((started, 0))
            reader = writer = None
        await asyncio.sleep(max(0.0, READYZ_EVERY_S - (time.monotonic() - started)))


async def _generate(port: int, rate: float, duration: float, concurrency: int, n_users: int, seed: int):
    serving = bench_serving()
    rng = np.random.default_rng(seed)
    count = int(rate * duration)
    requests = serving._request_bytes([f"u{i}" for i in rng.integers(0, n_users, size=count)], K)
    t0 = time.monotonic() + 0.2
    stop_at = t0 + duration
    retrieved: list = []
    readyz: list = []
    tasks = [
        _retrieve_loop(
            port, requests[c::concurrency], t0 + np.arange(c, count, concurrency) / rate, stop_at + 5, retrieved
        )
        for c in range(concurrency)
    ]
    await asyncio.gather(*tasks, _readyz_loop(port, stop_at, readyz))
    return retrieved, readyz


def loadgen_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="soak.py loadgen")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--rate", type=float, required=True)
    parser.add_argument("--duration", type=float, required=True)
    parser.add_argument("--concurrency", type=int, required=True)
    parser.add_argument("--users", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    retrieved, readyz = asyncio.run(
        _generate(args.port, args.rate, args.duration, args.concurrency, args.users, args.seed)
    )
    retrieved.sort(key=lambda row: row[0])
    columns = list(zip(*retrieved, strict=True)) if retrieved else [[]] * 7
    np.savez(
        args.out,
        start=np.array(columns[0], dtype=float),
        latency=np.array(columns[1], dtype=float),
        status=np.array(columns[2], dtype=int),
        code=np.array(columns[3], dtype=str),
        index_version=np.array(columns[4], dtype=str),
        users_version=np.array(columns[5], dtype=str),
        model_version=np.array(columns[6], dtype=str),
        readyz_at=np.array([r[0] for r in readyz], dtype=float),
        readyz_status=np.array([r[1] for r in readyz], dtype=int),
    )


# -- the store the soak runs on ------------------------------------------------------------------


def crashing_graph(source: Path, target: Path) -> None:
    """A copy of a saved hnswlib graph whose level-0 links point past the last element: it
    loads and verifies (the manifest hashes these bytes), and the first search segfaults."""
    from index_builder.loaded_index import _HEADER, read_header

    header = read_header(source)
    data = np.fromfile(source, dtype=np.uint8)
    block = data[_HEADER.size : _HEADER.size + header.element_count * header.bytes_per_element]
    block = block.reshape(header.element_count, header.bytes_per_element)
    links = block[:, 4 : 4 + 4 * header.max_m0].view(np.uint32)
    links[:] = 0x7FFFFFF0
    data.tofile(target)


class SoakStore:
    """The soak's own store: what was published, of which model, and which versions are bad."""

    def __init__(self, root: Path, pristine: Path, base_manifest, user_ids, user_vectors):
        from artifacts import ArtifactStore

        self.root = root
        self.store = ArtifactStore.open(f"file://{root}")
        self.pristine = pristine  # a verified local copy of the built index's files
        self.base_manifest = base_manifest
        self.user_ids, self.user_vectors = user_ids, user_vectors
        self.models: dict[tuple[str, str], str] = {}  # (kind, version) -> model
        self.bad: set[str] = set()  # index versions that must never be served
        self.model_number = 0
        self.serial = 0
        crash_dir = pristine.parent / f"{pristine.name}-crashes"
        if not (crash_dir / "index.hnsw").is_file():
            crash_dir.mkdir(parents=True, exist_ok=True)
            crashing_graph(pristine / "index.hnsw", crash_dir / "index.hnsw")
            shutil.copy(pristine / "ids.parquet", crash_dir / "ids.parquet")
        self.crash_dir = crash_dir

    @property
    def model(self) -> str:
        return f"soak-model-{self.model_number}"

    def _name(self, what: str) -> str:
        self.serial += 1
        return f"{datetime.now(UTC):%Y%m%dT%H%M%S}Z-{self.serial:04d}-{what}"

    def publish_users(self, model: str) -> str:
        from artifacts.embedding_snapshots import publish_snapshot

        version = self._name("users")
        publish_snapshot(
            self.store.kind("embeddings/users"),
            version,
            self.user_ids,
            self.user_vectors,
            model_version=model,
            as_of=0,
            reason="soak: user embeddings",
        )
        self.models[("embeddings/users", version)] = model
        return version

    def new_index(self, model: str, what: str, source: Path | None = None) -> str:
        """Writes an index version (the built files, or `source`'s) under a new name; not published."""
        kind = self.store.kind("indexes/stories")
        version = self._name(what)
        params = {**self.base_manifest.params, "copied_from": self.base_manifest.version}
        with kind.new_version(
            version, parents={**self.base_manifest.parents, "model_version": model}, params=params
        ) as writer:
            for name in self.base_manifest.files:
                writer.add_file(name, (source or self.pristine) / name)
            writer.metrics.update(self.base_manifest.metrics)
        self.models[("indexes/stories", version)] = model
        return version

    def publish_index(self, version: str, *, unchecked: bool = False) -> None:
        import inspect

        kind = self.store.kind("indexes/stories")
        if unchecked and "verify" in inspect.signature(kind.publish).parameters:
            kind.publish(version, reason="soak: a bad version", verify=False)  # the service must refuse it itself
        else:
            kind.publish(version, reason="soak")

    def flip_a_byte(self, version: str) -> None:
        from index_builder.loaded_index import INDEX_FILE

        kind = self.store.kind("indexes/stories")
        stored = kind.backend.local_path(kind.file_key(version, INDEX_FILE))  # the file its manifest names
        with open(stored, "r+b") as f:
            f.seek(stored.stat().st_size // 2)
            byte = f.read(1)
            f.seek(-1, os.SEEK_CUR)
            f.write(bytes([byte[0] ^ 0xFF]))


def prepare(args, workdir: Path, run_dir: Path) -> SoakStore:
    from artifacts.embedding_snapshots import read_snapshot

    serving = bench_serving()
    build, base_version, _, _ = serving.build_store(f"file://{workdir}/build", args.n, args.dim, args.users)
    indexes = build.kind("indexes/stories")
    pristine = indexes.download(base_version, workdir / "source")  # files already there and verified are kept
    users = read_snapshot(build.kind("embeddings/users"))
    soak = SoakStore(run_dir / "root", pristine, indexes.manifest(base_version), users.ids, users.vectors)
    model = soak.model
    soak.publish_users(model)
    first = soak.new_index(model, "base")
    soak.publish_index(first)
    return soak


# -- the fault schedule --------------------------------------------------------------------------


class Service:
    """`ebr serve` over the soak store, read through HTTP."""

    def __init__(self, url: str):
        import httpx

        self.http = httpx.Client(base_url=url, timeout=10)

    def versions(self) -> dict:
        return self.http.get("/v1/versions").json()

    def served(self) -> dict[str, str]:
        served = self.versions()["served"] or {"components": {}}
        return {kind: c["version"] for kind, c in served["components"].items()}

    def story_pid(self) -> int | None:
        served = self.versions()["served"]
        return served and served["components"]["indexes/stories"].get("searcher_pid")

    def load_seconds(self) -> float:
        for line in self.http.get("/metrics").text.splitlines():
            if line.startswith('ebr_serving_last_reload_seconds{kind="indexes/stories"}'):
                return float(line.split()[-1])
        return 0.0


class Scheduler:
    """Draws faults with a seeded RNG, injects them and checks the service's reaction."""

    def __init__(self, soak: SoakStore, service: Service, args, started: float):
        self.soak, self.service, self.args = soak, service, args
        self.rng = random.Random(args.seed)
        self.started = started
        self.events: list[dict] = []  # every fault: what, when, the checks and their outcomes
        self.kill_windows: list[tuple[float, float]] = []  # (killed at, allowed until) in monotonic time
        self.restarts: list[tuple[float, float]] = []  # (killed at, the restart's load seconds, per the service)
        self.deck: list[str] = []
        self.load_seconds = [service.load_seconds()]

    def bound(self) -> float:
        """How long the service may take to follow a change: poll interval + load time + slack."""
        return self.args.poll_interval + max(self.load_seconds) + self.args.slack

    def run(self, until: float, stop: threading.Event) -> None:
        while not stop.is_set():
            wait = self.args.fault_every * self.rng.uniform(0.5, 1.5)
            if time.monotonic() + wait > until - self.bound():
                break
            if stop.wait(wait):
                break
            if not self.deck:
                self.deck = self.rng.sample(ROUND, len(ROUND))
            fault = self.deck.pop()
            event = {"fault": fault, "at_s": round(time.monotonic() - self.started, 2), "checks": []}
            try:
                getattr(self, f"_{fault}")(event)
            except Exception as err:  # noqa: BLE001 - a fault that could not be injected is reported, not fatal
                event["checks"].append(
                    {"check": "fault injected", "ok": False, "detail": f"{type(err).__name__}: {err}"}
                )
            self.events.append(event)
            print(
                f"[{event['at_s']:7.1f} s] {fault}: "
                + "; ".join(f"{c['check']}: {'ok' if c['ok'] else 'BROKEN'}" for c in event["checks"]),
                flush=True,
            )

    def _check(self, event: dict, what: str, condition, timeout: float) -> bool:
        started = time.monotonic()
        while True:
            try:
                value = condition()
            except Exception as err:  # noqa: BLE001 - the service not answering is a failed check
                value, detail = False, f"{type(err).__name__}: {err}"
            else:
                detail = ""
            if value:
                event["checks"].append({"check": what, "ok": True, "seconds": round(time.monotonic() - started, 2)})
                return True
            if time.monotonic() - started > timeout:
                event["checks"].append(
                    {
                        "check": what,
                        "ok": False,
                        "seconds": round(timeout, 2),
                        "detail": detail or f"not within {timeout:.1f} s",
                    }
                )
                return False
            time.sleep(0.1)

    def _served_index(self) -> str | None:
        return self.service.served().get("indexes/stories")

    def _publish(self, event: dict) -> None:
        version = self.soak.new_index(self.soak.model, "copy")
        self.soak.publish_index(version)
        event["version"] = version
        self._check(
            event, f"serves {version}", lambda: self._served_index() == version, self.bound() + self._download_s()
        )
        self.load_seconds.append(self.service.load_seconds())

    def _rollback(self, event: dict) -> None:
        served = self._served_index()
        model = self.soak.models.get(("indexes/stories", served))
        candidates = [
            v.name
            for v in self.soak.store.kind("indexes/stories").versions()
            if v.complete
            and v.name != served
            and v.name not in self.soak.bad
            and self.soak.models.get(("indexes/stories", v.name)) == model
        ]
        if not candidates:
            event["skipped"] = "no earlier good version of the served model"
            return
        target = self.rng.choice(candidates)
        self.soak.store.kind("indexes/stories").rollback_to(target, reason="soak: rollback")
        event["version"] = target
        self._check(
            event, f"serves {target}", lambda: self._served_index() == target, self.bound() + self._download_s()
        )

    def _corrupt(self, event: dict) -> None:
        version = self.soak.new_index(self.soak.model, "corrupt")
        self.soak.flip_a_byte(version)
        self.soak.bad.add(version)
        served = self._served_index()
        self.soak.publish_index(version, unchecked=True)
        event["version"] = version
        self._check(event, f"refuses {version}", lambda: self._refused(version), self.bound() + self._download_s())
        self._check(event, "keeps serving the previous version", lambda: self._served_index() == served, 1.0)

    def _crash(self, event: dict) -> None:
        version = self.soak.new_index(self.soak.model, "crashes", source=self.soak.crash_dir)
        self.soak.bad.add(version)
        served = self._served_index()
        self.soak.publish_index(version)
        event["version"] = version
        # max_load_crashes attempts, backoff 1 s doubling: 1 + 2 + the loads and polls.
        crashes = self.args.max_load_crashes
        budget = (
            sum(self.args.load_backoff * 2**i for i in range(crashes - 1)) + crashes * self.bound() + self._download_s()
        )
        self._check(event, f"refuses {version} after {crashes} crashes", lambda: self._refused(version), budget)
        self._check(event, "keeps serving the previous version", lambda: self._served_index() == served, 1.0)

    def _rollout(self, event: dict) -> None:
        served = self.service.served()
        self.soak.model_number += 1
        model = self.soak.model
        users = self.soak.publish_users(model)
        event["users_version"] = users
        self._check(
            event,
            "waits for the pair, serving the old one",
            lambda: self.service.versions()["last_reload"]["action"] == "waiting",
            self.bound(),
        )
        self._check(
            event,
            "the old pair still served",
            lambda: self.service.served().get("embeddings/users") == served.get("embeddings/users"),
            1.0,
        )
        time.sleep(3 * self.args.poll_interval)
        version = self.soak.new_index(model, "rollout")
        self.soak.publish_index(version)
        event["version"] = version
        self._check(
            event,
            f"serves the {model} pair",
            lambda: (
                self.service.served().get("indexes/stories") == version
                and self.service.served().get("embeddings/users") == users
            ),
            self.bound() + self._download_s(),
        )

    def _kill(self, event: dict) -> None:
        pid = self.service.story_pid()
        if pid is None:
            event["skipped"] = "no story index process"
            return
        killed = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        self.kill_windows.append((killed, killed + self.bound()))
        event["pid"] = pid
        self._check(
            event,
            "restarts the story index process",
            lambda: self.service.story_pid() not in (None, pid) and self.service.http.get("/readyz").status_code == 200,
            self.bound(),
        )
        restart_s = self.service.load_seconds()  # the restart from the cache, as the service timed it
        event["restart_load_s"] = round(restart_s, 3)
        self.restarts.append((killed, restart_s))

    def _retention(self, event: dict) -> None:
        # Issue #13's case: LATEST names a newer version the service refused, retention keeps
        # the newest one (and LATEST's), so it deletes the served version; then the served
        # version's process dies. Its restart can only come from the local cache.
        self._corrupt(event)
        served = self._served_index()
        report = self.soak.store.kind("indexes/stories").retain(keep=1)
        event["deleted"] = report.deleted
        event["checks"].append(
            {"check": "retention deleted the served version (the case set up)", "ok": served in report.deleted}
        )
        self._kill(event)

    def _refused(self, version: str) -> bool:
        return any(r["version"] == version for r in self.service.versions()["refused"])

    def _download_s(self) -> float:
        # Download + sha256 of a new version into the cache, on top of the load; about 1 s
        # per 100 MB on a busy machine.
        size = sum(e.size for e in self.soak.base_manifest.files.values())
        return 1.0 + size / 100e6


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
        if not (models.get(("indexes/stories", index)) == models.get(("embeddings/users", users)) == model):
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
        if b - a > 2 * READYZ_EVERY_S and not ((readyz_at >= a) & (readyz_at <= b) & (readyz_status != 200)).any()
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
                __file__,
                "loadgen",
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
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
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
    if len(sys.argv) > 1 and sys.argv[1] == "loadgen":
        loadgen_main(sys.argv[2:])
    else:
        sys.exit(0 if run()["ok"] else 1)
