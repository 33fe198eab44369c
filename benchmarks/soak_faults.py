"""What benchmarks/soak.py does to the service: its store, the faults, and the check after each.

`prepare` publishes the built index and the users into the soak's own store
(`SoakStore`, which also remembers each version's model and which versions are bad);
`Scheduler` runs the seeded fault schedule against the running service (`Service`,
read through HTTP) and checks, after each fault, what the service must do and by
when. soak.py's docstring lists the faults; soak.py runs the service and the load
generator, and analyses the answers afterwards.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from artifacts.kinds import STORY_INDEX, USER_EMBEDDINGS

# One round of the schedule: every fault at least once, in a seeded random order.
ROUND = ("publish", "publish", "rollback", "corrupt", "crash", "rollout", "kill", "kill", "retention")


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
            self.store.kind(USER_EMBEDDINGS),
            version,
            self.user_ids,
            self.user_vectors,
            model_version=model,
            as_of=0,
            reason="soak: user embeddings",
        )
        self.models[(USER_EMBEDDINGS, version)] = model
        return version

    def new_index(self, model: str, what: str, source: Path | None = None) -> str:
        """Writes an index version (the built files, or `source`'s) under a new name; not published."""
        kind = self.store.kind(STORY_INDEX)
        version = self._name(what)
        params = {**self.base_manifest.params, "copied_from": self.base_manifest.version}
        with kind.new_version(
            version, parents={**self.base_manifest.parents, "model_version": model}, params=params
        ) as writer:
            for name in self.base_manifest.files:
                writer.add_file(name, (source or self.pristine) / name)
            writer.metrics.update(self.base_manifest.metrics)
        self.models[(STORY_INDEX, version)] = model
        return version

    def publish_index(self, version: str, *, unchecked: bool = False) -> None:
        import inspect

        kind = self.store.kind(STORY_INDEX)
        if unchecked and "verify" in inspect.signature(kind.publish).parameters:
            kind.publish(version, reason="soak: a bad version", verify=False)  # the service must refuse it itself
        else:
            kind.publish(version, reason="soak")

    def flip_a_byte(self, version: str) -> None:
        from index_builder.loaded_index import INDEX_FILE

        kind = self.store.kind(STORY_INDEX)
        stored = kind.backend.local_path(kind.file_key(version, INDEX_FILE))  # the file its manifest names
        with open(stored, "r+b") as f:
            f.seek(stored.stat().st_size // 2)
            byte = f.read(1)
            f.seek(-1, os.SEEK_CUR)
            f.write(bytes([byte[0] ^ 0xFF]))


def prepare(args, workdir: Path, run_dir: Path) -> SoakStore:
    from artifacts.embedding_snapshots import read_snapshot
    from benchmarks import serving

    build, base_version, _, _ = serving.build_store(f"file://{workdir}/build", args.n, args.dim, args.users)
    indexes = build.kind(STORY_INDEX)
    pristine = indexes.download(base_version, workdir / "source")  # files already there and verified are kept
    users = read_snapshot(build.kind(USER_EMBEDDINGS))
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
        return served and served["components"][STORY_INDEX].get("searcher_pid")

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
        return self.service.served().get(STORY_INDEX)

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
        model = self.soak.models.get((STORY_INDEX, served))
        candidates = [
            v.name
            for v in self.soak.store.kind(STORY_INDEX).versions()
            if v.complete
            and v.name != served
            and v.name not in self.soak.bad
            and self.soak.models.get((STORY_INDEX, v.name)) == model
        ]
        if not candidates:
            event["skipped"] = "no earlier good version of the served model"
            return
        target = self.rng.choice(candidates)
        self.soak.store.kind(STORY_INDEX).rollback_to(target, reason="soak: rollback")
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
            lambda: self.service.served().get(USER_EMBEDDINGS) == served.get(USER_EMBEDDINGS),
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
                self.service.served().get(STORY_INDEX) == version
                and self.service.served().get(USER_EMBEDDINGS) == users
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
        report = self.soak.store.kind(STORY_INDEX).retain(keep=1)
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
