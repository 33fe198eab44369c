"""The router's fan-out (`serving.fanout`) against real shard-wire servers on loopback, in
one event loop: each replica's answer is scripted (its delay, status, version), so the
retry, hedge and version rules of the common path (one frame per shard, one wait) are
checked one by one. The same rules through real shard servers and `ebr route` are
tests/test_router.py's."""

from __future__ import annotations

import asyncio
import time

import numpy as np

from config.settings import RouterConfig
from serving import wire
from serving.fanout import FanOut, ShardCall
from serving.replicas import ReplicaPool
from serving.responses import ApiError
from serving.router import Pin
from serving.router_metrics import RouterMetrics
from serving.wire import WireClient

VERSION = "20261201T000000Z-v1"


def _behaviour(shard: int, replica: int, *, sleep: float = 0.0, status: int = 200, version: str = VERSION):
    """A replica's handler: after `sleep` seconds, `status` (an ApiError unless 200) or an
    answer from `version` whose items name the shard and the replica."""

    async def handler(meta: dict, payload: bytes) -> tuple[dict, bytes]:
        await asyncio.sleep(sleep)
        if status != 200:
            raise ApiError(status, "version_not_held", "scripted")
        query = np.frombuffer(payload, dtype="<f4")
        items = [[f"s{shard}-r{replica}-{i}", float(query[0]) - i - shard / 10] for i in range(meta["k"])]
        return {"version": version, "model_version": "m1", "items": items}, b""

    return handler


def _run(grid: list[list[dict]], scenario, **router: float):
    """Starts one wire server per replica of `grid` (its behaviour's keyword arguments),
    a FanOut over them (every replica healthy and holding VERSION), and runs
    `scenario(fanout, metrics)`."""

    async def main():
        servers, urls = [], []
        for shard, row in enumerate(grid):
            urls.append([])
            for replica, behaviour in enumerate(row):
                server = await wire.start_server(
                    _behaviour(shard, replica, **behaviour), "127.0.0.1", 0, token=None, observe=lambda *_: None
                )
                servers.append(server)
                urls[-1].append(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}")
        metrics = RouterMetrics()
        pool = ReplicaPool(urls, metrics, health_timeout_s=1.0)
        for row in pool.grid:
            for replica in row:
                replica.healthy, replica.held = True, {"stories": frozenset({VERSION})}
                replica.wire_port = int(replica.url.rsplit(":", 1)[1])
        fanout = FanOut(pool, RouterConfig(**router), metrics)
        fanout.wire = WireClient()
        try:
            return await scenario(fanout, metrics)
        finally:
            fanout.wire.close()
            for server in servers:
                server.close()

    return asyncio.run(main())


def _search(fanout: FanOut, deadline_s: float = 2.0):
    call = ShardCall("search", "stories", VERSION, {"k": 3, "exclude": []}, np.full(4, 10.0, dtype=np.float32))
    return fanout.ask_every_shard(call, time.monotonic() + deadline_s)


def _pin() -> Pin:
    return Pin("stories", VERSION, "m1", 4, "now")


def _counts(metrics: RouterMetrics, name: str) -> dict[tuple[str, ...], float]:
    return {
        tuple(s.labels.values()): s.value
        for family in metrics.registry.collect()
        if family.name == name
        for s in family.samples
        if s.name.endswith("_total")
    }


def test_every_shard_answers_once_and_the_merge_takes_the_best_of_both():
    async def scenario(fanout, metrics):
        await _connect_all(fanout)
        answer = await fanout.search(_pin(), np.full(4, 10.0, dtype=np.float32), 3, [], time.monotonic() + 2)
        assert [i["id"] for i in answer["items"]] == ["s0-r0-0", "s1-r0-0", "s0-r0-1"]
        assert answer["coverage"] == 1.0 and answer["missing_shards"] == []
        assert [s["attempts"] for s in answer["shards"]] == [1, 1]
        assert _counts(metrics, "ebr_router_shard_attempts") == {("0", "ok"): 1.0, ("1", "ok"): 1.0}
        assert _counts(metrics, "ebr_router_hedges") == {}

    _run([[{}], [{}]], scenario)


def _address(fanout: FanOut, shard: int, replica: int) -> tuple[str, int]:
    r = fanout.pool.grid[shard][replica]
    return r.host, r.wire_port


def test_a_bad_first_answer_is_retried_at_once_not_at_the_hedge():
    # Shard 0's first replica no longer holds the version (409); shard 1 answers late, so
    # waiting for every first answer before retrying would cost its 0.3 s.
    async def scenario(fanout, metrics):
        await _connect_all(fanout)
        began = time.monotonic()
        answers = await _search(fanout)
        assert answers[0].replica == fanout.pool.grid[0][1].url and answers[0].attempts == 2
        assert answers[0].seconds < 0.25, answers[0].seconds  # before shard 1's answer came
        assert answers[1].attempts == 1 and time.monotonic() - began >= 0.3
        assert not fanout.pool.grid[0][0].healthy  # skipped until its next health check
        assert _counts(metrics, "ebr_router_shard_attempts")[("0", "error")] == 1.0
        assert _counts(metrics, "ebr_router_hedges") == {}

    _run([[{"status": 409}, {}], [{"sleep": 0.3}]], scenario, hedge_after_ms=1000)


def test_an_answer_from_another_version_is_never_merged():
    async def scenario(fanout, metrics):
        await _connect_all(fanout)
        answers = await _search(fanout)
        assert answers[1].payload["version"] == VERSION and answers[1].attempts == 2
        assert all(item_id.startswith("s1-r1-") for item_id, _ in answers[1].payload["items"])
        assert _counts(metrics, "ebr_router_shard_attempts")[("1", "wrong_version")] == 1.0

    _run([[{}], [{"version": "20261202T000000Z-v2"}, {}]], scenario, hedge_after_ms=1000)


def test_a_slow_first_replica_is_hedged_after_hedge_after_ms_and_its_request_let_go():
    async def scenario(fanout, metrics):
        await _connect_all(fanout)
        began = time.monotonic()
        answers = await _search(fanout)
        took = time.monotonic() - began
        assert answers[0].replica == fanout.pool.grid[0][1].url and answers[0].attempts == 2
        assert 0.1 <= took < 0.19, took  # the hedge went at 100 ms: not at 200, nor at the slow answer's 1 s
        assert _counts(metrics, "ebr_router_hedges") == {("0",): 1.0}
        await asyncio.sleep(0.01)  # done callbacks run on the loop's next turns
        slow = fanout.wire._connections[_address(fanout, 0, 0)]
        assert slow.waiting == {}  # the slow request's slot is freed; its late answer is dropped

    _run([[{"sleep": 1.0}, {}], [{}]], scenario, hedge_after_ms=100)


def test_a_shard_with_no_answer_by_the_deadline_is_missing_and_the_rest_is_kept():
    async def scenario(fanout, metrics):
        await _connect_all(fanout)
        answers = await _search(fanout, deadline_s=0.2)
        assert answers[0] is None and answers[1].attempts == 1
        assert _counts(metrics, "ebr_router_shard_attempts")[("0", "timeout")] == 1.0

    _run([[{"sleep": 1.0}], [{}]], scenario, hedge_after_ms=50)


def test_the_first_request_to_a_replica_opens_its_connection():
    async def scenario(fanout, metrics):
        assert fanout.wire.send(*_address(fanout, 0, 0), {"op": "search", "k": 1}) is None  # nothing open yet
        answers = await _search(fanout)
        assert [a.attempts for a in answers] == [1, 1]
        assert len(fanout.wire._connections) == 2
        answers = await _search(fanout)  # and the next goes on them
        assert [a.attempts for a in answers] == [1, 1]

    _run([[{}], [{}]], scenario)


async def _connect_all(fanout: FanOut) -> None:
    """Opens the connection to every replica (a request, given up at once)."""
    for shard, row in enumerate(fanout.pool.grid):
        for replica in range(len(row)):
            address = _address(fanout, shard, replica)
            (await fanout.wire.submit(*address, {"op": "warm", "k": 1}, b"\0" * 16, timeout=2)).cancel()
