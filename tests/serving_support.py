"""What the service tests run on (tests/test_serving.py, test_chaos_serving.py,
test_serving_newcomer.py): a small real artifact store (`World`: clustered vectors, dim 16,
real hnswlib indexes written directly, or corrupt ones), the service on a real uvicorn
server on a free loopback port with a 0.1 s poll interval (`start_service`, always stopped),
and helpers to read its answers and metrics."""

from __future__ import annotations

import inspect
import sys
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
from index_builder.loaded_index import IDS_FILE, INDEX_FILE, write_ids
from serving.server import ServerThread, build_service

DIM = 16
N_STORIES = 2_000
N_USERS = 100
POLL_S = 0.1
EBR = str(Path(sys.executable).with_name("ebr"))  # the console script


@dataclass
class World:
    """A test artifact store plus the vectors of every version written, to check answers."""

    tmp: Path
    store: ArtifactStore
    vectors: dict[tuple[str, str], dict[str, np.ndarray]] = field(default_factory=dict)  # (kind, version) -> id -> vec
    models: dict[tuple[str, str], str] = field(default_factory=dict)  # (kind, version) -> model version

    @property
    def root(self) -> str:
        return self.store.uri

    def users(self, version: str, model: str, seed: int, n: int = N_USERS, dim: int = DIM) -> None:
        ids = np.asarray([f"u{i}" for i in range(n)], dtype=object)
        vecs = clustered_vectors(n, dim, clusters=10, seed=seed)
        publish_snapshot(
            self.store.kind("embeddings/users"), version, ids, vecs, model_version=model, as_of=0, reason="test"
        )
        self._remember("embeddings/users", version, model, ids, vecs)

    def index(
        self,
        collection: str,
        version: str,
        model: str,
        seed: int,
        *,
        n: int = N_STORIES,
        dim: int = DIM,
        corrupt: Callable[[Path], None] | None = None,
        manifest_dim: int | None = None,
        damage: Callable[[Path], None] | None = None,
        ids: list[str] | None = None,
    ) -> None:
        """Writes and publishes an index version; `corrupt` alters its stored files first (the
        checksum then disagrees), `damage` alters the graph file before it is hashed (a version
        that verifies but is bad inside); `ids` replaces the default ids s0, s1, ..."""
        import hnswlib

        prefix = {"stories": "s", "creators": "c", "users": "u"}[collection]
        ids = np.asarray(ids if ids is not None else [f"{prefix}{i}" for i in range(n)], dtype=object)
        vecs = clustered_vectors(n, dim, clusters=20, seed=seed)
        graph = hnswlib.Index(space="ip", dim=dim)
        graph.init_index(max_elements=n, M=8, ef_construction=64, random_seed=1)
        graph.add_items(vecs, np.arange(n), num_threads=1)
        work = self.tmp / "build" / collection / version
        work.mkdir(parents=True)
        graph.save_index(str(work / INDEX_FILE))
        if damage is not None:
            damage(work / INDEX_FILE)
        write_ids(work / IDS_FILE, ids)
        kind = self.store.kind(f"indexes/{collection}")
        params = {"space": "ip", "dim": manifest_dim or dim, "count": n, "ef_search": 100}
        with kind.new_version(version, parents={"model_version": model}, params=params) as writer:
            writer.add_file(INDEX_FILE, work / INDEX_FILE)
            writer.add_file(IDS_FILE, work / IDS_FILE)
        if corrupt is not None:
            # The stored bytes, where the manifest says they are (the attempt's folder).
            corrupt(kind.backend.local_path(kind.file_key(version, INDEX_FILE)))
        if corrupt is not None and "verify" in inspect.signature(kind.publish).parameters:
            kind.publish(version, reason="test", verify=False)  # a store that checks on publish would refuse it
        else:
            kind.publish(version, reason="test")
        self._remember(f"indexes/{collection}", version, model, ids, vecs)

    def _remember(self, kind: str, version: str, model: str, ids, vecs) -> None:
        self.vectors[(kind, version)] = dict(zip(ids, vecs, strict=True))
        self.models[(kind, version)] = model

    def check_answer(self, body: dict, user_id: str) -> None:
        """The answer came from one consistent pair, and its scores are that pair's dot products."""
        served = body["served"]
        index_key, users_key = (
            ("indexes/stories", served["index_version"]),
            ("embeddings/users", served["user_embeddings_version"]),
        )
        assert self.models[index_key] == self.models[users_key] == served["model_version"], served
        user = self.vectors[users_key][user_id]
        for hit in body["items"]:
            assert hit["score"] == pytest.approx(float(user @ self.vectors[index_key][hit["id"]]), abs=1e-4), served


@pytest.fixture
def world(tmp_path) -> World:
    return World(tmp_path, ArtifactStore.open(f"file://{tmp_path}/root"))


@pytest.fixture
def searcher(request) -> str:
    """Where indexes live (serving.searcher). Tests of the HTTP layer use "inline" (faster to
    start); tests of loading and swapping run with both, through BOTH_SEARCHERS."""
    return getattr(request, "param", "inline")


BOTH_SEARCHERS = pytest.mark.parametrize("searcher", ["process", "inline"], indirect=True)


@pytest.fixture
def start_service(world, searcher):
    """Starts the service over `world` (extra `--set` overrides allowed); always stopped."""
    running: list[ServerThread] = []

    def start(*overrides: str):
        return started_service(
            world,
            running,
            f"serving.poll_interval_s={POLL_S}",
            f"serving.searcher={searcher}",
            "serving.max_k=50",
            "serving.default_k=10",
            "serving.max_body_bytes=4096",
            *overrides,
        )

    yield start
    for server in running:
        server.stop()  # the lifespan closes the reloader: index processes exit with their state


def started_service(world: World, running: list[ServerThread], *settings: str):
    """(service, server, client): the service over `world` with `settings` (`--set` style,
    after its root and cache folder) on a free loopback port, added to `running`, which the
    caller stops."""
    cfg = load_config(overrides=[f"root={world.root}", f"serving.cache_dir={world.tmp}/cache", *settings], environ={})
    service = build_service(cfg)
    server = ServerThread(service.app).start()
    running.append(server)
    return service, server, httpx.Client(base_url=server.url, timeout=10)


def served_index(client: httpx.Client) -> str | None:
    served = client.get("/v1/versions").json()["served"]
    return served and served["components"]["indexes/stories"]["version"]


def metric(exposition: str, series: str) -> float:
    """The value of one series (name with its labels) in a Prometheus text exposition."""
    for line in exposition.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{series} not in the metrics")


def retrieve(client: httpx.Client, **body) -> httpx.Response:
    return client.post("/v1/retrieve/stories", json=body)


def error_code(response: httpx.Response) -> tuple[int, str]:
    return response.status_code, response.json()["error"]["code"]


def publish_model_versions(store: ArtifactStore, moves) -> None:
    """Publishes a one-file version per (kind, version, model) of `moves`, in order, each
    naming its model: the pointer history the pairing and retention rules read."""
    for kind_name, version, model in moves:
        kind = store.kind(kind_name)
        with kind.new_version(version, parents={"model_version": model}) as writer:
            writer.add_bytes("part", version.encode())
        kind.publish(version, reason="test")
