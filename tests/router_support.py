"""What the router tests (tests/test_router.py) run on: a small real store whose shard sets
the real index builder makes (`Sets`), shard servers as real processes (`ShardProcess`,
the `cluster` fixture), the router on a real uvicorn server in this process
(`start_router`), a real redis-server (`redis_url`) and request load (`Load`)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pytest

from artifacts import ArtifactStore
from artifacts.embedding_snapshots import publish_snapshot
from benchmarks.synthetic_vectors import clustered_vectors
from config import load_config
from index_builder import hnsw
from index_builder.publish import build_and_publish_index
from serving.router_app import build_router
from serving.server import ServerThread
from tests.gcs_support import free_port
from tests.polling import wait_for

REPO = Path(__file__).resolve().parent.parent
DIM, N_STORIES, N_USERS = 16, 600, 40
POLL_S = 0.1
STARTUP_S = 60.0  # a shard server's first start on a busy 2-core machine (imports, first load)


@dataclass
class Sets:
    """The store and every story set published, to check answers against exact search."""

    tmp: Path
    store: ArtifactStore
    stories: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # index version -> id -> vector
    users: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)

    @property
    def root(self) -> str:
        return self.store.uri

    def cfg(self, *overrides: str):
        return load_config(
            overrides=[
                f"root={self.root}",
                "index.shards=2",
                "index.ef_construction=100",
                "index.ef_search=200",
                "index.threads=1",
                *overrides,
            ],
            environ={},
        )

    def publish_users(self, version: str, model: str = "m1", seed: int = 1) -> None:
        ids = np.asarray([f"u{i}" for i in range(N_USERS)], dtype=object)
        vectors = clustered_vectors(N_USERS, DIM, clusters=5, seed=seed)
        publish_snapshot(
            self.store.kind("embeddings/users"), version, ids, vectors, model_version=model, as_of=0, reason="test"
        )
        self.users[version] = dict(zip(ids, vectors, strict=True))

    def build_stories(
        self, version: str, *, prefix: str = "s", seed: int = 2, model: str = "m1", publish: bool = True
    ) -> str:
        """A story snapshot and its shard set (the real builder); `prefix` makes each set's ids
        its own, so an answer mixing two sets cannot go unnoticed."""
        ids = np.asarray([f"{prefix}{i}" for i in range(N_STORIES)], dtype=object)
        vectors = clustered_vectors(N_STORIES, DIM, clusters=10, seed=seed)
        publish_snapshot(
            self.store.kind("embeddings/stories"), version, ids, vectors, model_version=model, as_of=0, reason="test"
        )
        outcome = build_and_publish_index(self.cfg(), "stories", snapshot=version, publish=publish)
        assert outcome.manifest.params["shards"] == 2
        self.stories[outcome.version] = dict(zip(ids, vectors, strict=True))
        return outcome.version

    def exact(self, version: str, query: np.ndarray, k: int, exclude: tuple[str, ...] = ()) -> list[str]:
        items = {i: v for i, v in self.stories[version].items() if i not in exclude}
        ids = np.asarray(list(items), dtype=object)
        top = hnsw.exact_top_k(np.stack(list(items.values())), query[None, :], k)[0]
        return list(ids[top])

    def check(self, body: dict, user_id: str) -> None:
        """One generation: every shard answered from the version the answer names, and every
        score is that version's dot product with the user."""
        version = body["served"]["index_version"]
        assert {s["version"] for s in body["shards"]} == {version}, body["shards"]
        user = self.users[body["served"]["user_embeddings_version"]][user_id]
        for hit in body["items"]:
            assert hit["score"] == pytest.approx(float(user @ self.stories[version][hit["id"]]), abs=1e-4), version


class ShardProcess:
    """`ebr serve --shard I/S` in a process of its own on a free loopback port."""

    def __init__(
        self,
        sets: Sets,
        shard: int,
        shards: int = 2,
        *,
        poll_s: float = POLL_S,
        spec: str | None = None,
        searcher: str = "inline",
        token: str = "",
    ):
        self.shard, self.port = shard, free_port()
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = sets.tmp / f"shard-{shard}-{self.port}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("EBR_")}
        env["TF_USE_LEGACY_KERAS"] = "1"
        command = [
            sys.executable,
            "-m",
            "cli.main",
            "--root",
            sets.root,
            "--set",
            f"serving.cache_dir={sets.tmp}/cache-{self.port}",
            "--set",
            f"serving.poll_interval_s={poll_s}",
            "--set",
            f"serving.searcher={searcher}",
            "--set",
            "serving.max_k=50",
            "--set",
            "serving.default_k=10",
            "--set",
            f"serving.token={token}",
            "serve",
            "--shard",
            spec or f"{shard}/{shards}",
            "--port",
            str(self.port),
        ]
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]

    def status(self) -> dict | None:
        try:
            return httpx.get(f"{self.url}/v1/shard", headers=self.headers, timeout=2).json()
        except httpx.HTTPError:
            return None

    def wait_ready(self, timeout: float = STARTUP_S) -> ShardProcess:
        def ready():
            assert self.process.poll() is None, f"shard server exited:\n{self.logs()}"
            status = self.status()
            return status is not None and status["ready"]

        wait_for(ready, what=f"shard server {self.url} ready", timeout=timeout, interval=0.1, details=self.logs)
        return self

    def current(self) -> str | None:
        status = self.status()
        return None if status is None else status["collections"].get("stories", {}).get("current")

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def freeze(self) -> None:
        """SIGSTOP: the port stays open and connections are accepted, nothing is answered."""
        self.process.send_signal(signal.SIGSTOP)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture
def sets(tmp_path) -> Sets:
    return Sets(tmp_path, ArtifactStore.open(f"file://{tmp_path}/root"))


@pytest.fixture
def cluster(sets):
    """start(replicas, poll) -> shard servers ([shard][replica]), always stopped. The second
    replica of each shard holds its indexes in index processes (serving.searcher=process,
    the default), the first in its own process (inline)."""
    started: list[ShardProcess] = []

    def start(replicas: int = 2, *, poll_s: Callable[[int], float] = lambda shard: POLL_S) -> list[list[ShardProcess]]:
        grid = [
            [
                ShardProcess(sets, shard, poll_s=poll_s(shard), searcher=("inline", "process")[r % 2])
                for r in range(replicas)
            ]
            for shard in range(2)
        ]
        started.extend(p for row in grid for p in row)
        for row in grid:
            for process in row:
                process.wait_ready()
        return grid

    yield start
    for process in started:
        process.stop()


@pytest.fixture
def start_router(sets):
    running: list[ServerThread] = []

    def start(grid: list[list[ShardProcess]], *overrides: str):
        replicas = "[" + ",".join("[" + ",".join(f'"{p.url}"' for p in row) + "]" for row in grid) + "]"
        cfg = sets.cfg(
            f"serving.cache_dir={sets.tmp}/router-cache-{len(running)}",
            f"serving.poll_interval_s={POLL_S}",
            f"router.replicas={replicas}",
            "router.health_interval_s=0.1",
            "router.deadline_ms=3000",
            "router.hedge_after_ms=200",
            "serving.max_k=50",
            "serving.default_k=10",
            *overrides,
        )
        app, router = build_router(cfg)
        server = ServerThread(app).start()
        running.append(server)
        client = httpx.Client(base_url=server.url, timeout=10)
        wait_for(
            lambda: client.get("/readyz").status_code == 200,
            what="router ready",
            timeout=20,
            details=lambda: client.get("/v1/versions").text,
        )
        return router, client

    yield start
    for server in running:
        server.stop()


@pytest.fixture
def redis_url(tmp_path):
    """A real redis-server on a free loopback port, nothing written to disk; always stopped."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (apt-get install -y redis-server)")
    import redis

    port = free_port()
    process = subprocess.Popen(
        [
            "redis-server",
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp_path),
        ],
        stdout=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"

    def answers():
        try:
            return redis.Redis.from_url(url).ping()
        except redis.exceptions.ConnectionError:
            return False

    try:
        wait_for(answers, what="redis-server to answer", timeout=20)
        yield url
    finally:
        process.terminate()
        process.wait(10)


def pinned(client: httpx.Client) -> str | None:
    pin = client.get("/v1/versions").json()["pinned"].get("stories")
    return pin and pin["version"]


class Load:
    """Threads asking the router for users' top stories until stopped; every answer kept."""

    def __init__(self, url: str, threads: int = 2):
        self.url, self.stop_flag = url, threading.Event()
        self.answers: list[tuple[str, int, dict]] = []
        self.threads = [threading.Thread(target=self._run, args=(n,), daemon=True) for n in range(threads)]

    def _run(self, n: int) -> None:
        with httpx.Client(base_url=self.url, timeout=10) as client:
            i = n
            while not self.stop_flag.is_set():
                user = f"u{i % N_USERS}"
                try:
                    response = client.post("/v1/retrieve/stories", json={"user_id": user, "k": 10})
                    self.answers.append((user, response.status_code, response.json()))
                except httpx.HTTPError as err:
                    self.answers.append((user, 0, {"error": str(err)}))
                i += 2

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop_flag.set()
        for thread in self.threads:
            thread.join(30)

    def wait_answers(self, n: int, timeout: float = 20.0) -> None:
        start = len(self.answers)
        wait_for(lambda: len(self.answers) >= start + n, what=f"{n} more answers under load", timeout=timeout)
