"""The router's fan-out: a query to one replica of every shard, concurrently, for one named
version, and the merge of their answers by score (each id once).

A replica that errs, refuses the connection or answers with another version is replaced
at once by the next replica of its shard; one that has not answered after
`router.hedge_after_ms` is hedged (asked on another replica too; the first good answer
wins), up to `router.max_attempts` per shard, all within the request's deadline. An answer
that names another version is discarded like an error, so no answer merges two generations.

A replica is asked over the shard wire (`serving.wire`) when its health check advertised a
wire port and `router.transport = "wire"` (the default), over HTTP otherwise; both carry
the same requests and answers.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import orjson

from config.settings import RouterConfig
from index_builder.sharding import merge_top_k, shard_of
from serving.replicas import Replica, ReplicaPool
from serving.responses import ApiError
from serving.router_metrics import RouterMetrics
from serving.wire import WireError

if TYPE_CHECKING:
    from serving.router import Pin


@dataclass(frozen=True)
class ShardAnswer:
    shard: int
    status: int  # 200, or 404 (unknown id on vector)
    payload: dict | None
    replica: str | None
    attempts: int
    seconds: float


@dataclass(frozen=True)
class ShardCall:
    """One request to a shard: `op` "search" (params k, exclude; `vector` the query) or
    "vector" (params id), on `collection`, answered from `version` only."""

    op: str
    collection: str
    version: str
    params: dict
    vector: np.ndarray | None = None

    def http(self) -> tuple[str, bytes]:
        body = {**self.params, "version": self.version}
        if self.vector is not None:
            body["embedding"] = self.vector.tolist()
        return f"/v1/{self.op}/{self.collection}", orjson.dumps(body)

    def wire(self) -> tuple[dict, bytes]:
        meta = {"op": self.op, "collection": self.collection, "version": self.version, **self.params}
        return meta, b"" if self.vector is None else self.vector.astype("<f4").tobytes()


class FanOut:
    """Asks the shards of `pool`, over the shard wire (`wire`, a WireClient) or HTTP (`http`,
    an httpx.AsyncClient); both are set when the router starts."""

    def __init__(self, pool: ReplicaPool, rcfg: RouterConfig, metrics: RouterMetrics):
        self.pool, self.rcfg, self.metrics = pool, rcfg, metrics
        self.shards = pool.shards
        self.http = None
        self.wire = None

    async def ask_shard(self, shard: int, call: ShardCall, deadline: float) -> ShardAnswer | None:
        """One shard's answer for `call.version`: the first good answer of up to max_attempts
        replicas (the next one started at once on an error, or after hedge_after_ms); None
        when none answered by the deadline."""
        candidates = self.pool.candidates(shard, call.collection, call.version)[: self.rcfg.max_attempts]
        started = time.perf_counter()
        pending: dict[asyncio.Task, Replica] = {}
        tried = 0

        def launch() -> None:
            nonlocal tried
            replica = candidates[tried]
            tried += 1
            pending[asyncio.create_task(self._attempt(replica, call, deadline))] = replica

        launch()
        try:
            while pending:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                wait = min(remaining, self.rcfg.hedge_after_ms / 1000) if tried < len(candidates) else remaining
                done, _ = await asyncio.wait(pending, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
                if not done:  # slow: hedge on the next replica, keep waiting for both
                    if tried < len(candidates):
                        self.metrics.hedges.labels(str(shard)).inc()
                        launch()
                    continue
                for task in done:
                    replica = pending.pop(task)
                    result = task.result()
                    if isinstance(result, tuple):
                        return ShardAnswer(
                            shard, result[0], result[1], replica.url, tried, time.perf_counter() - started
                        )
                    self.metrics.attempts.labels(str(shard), result).inc()
                if not pending and tried < len(candidates):
                    launch()
            for _ in pending:
                self.metrics.attempts.labels(str(shard), "timeout").inc()
            return None
        finally:
            for task in pending:
                task.cancel()

    async def _attempt(self, replica: Replica, call: ShardCall, deadline: float):
        """(status, body) of a good answer, or the name of the failure."""
        timeout = max(0.001, deadline - time.monotonic())
        if replica.wire_port is not None and self.rcfg.transport == "wire":
            answer = await self._over_wire(replica, call, timeout)
        else:
            answer = await self._over_http(replica, call, timeout)
        if isinstance(answer, str):
            return answer
        status, body = answer
        if status == 404 and call.op == "vector":
            self.metrics.attempts.labels(str(replica.shard), "ok").inc()
            return 404, None
        if status != 200:
            if status in (409, 503):  # it no longer holds the version / is reloading
                replica.healthy, replica.reason = False, f"HTTP {status} (until its next health check)"
            return "error"
        if body.get("version") != call.version:  # never merged: another generation
            return "wrong_version"
        self.metrics.attempts.labels(str(replica.shard), "ok").inc()
        return 200, body

    async def _over_http(self, replica: Replica, call: ShardCall, timeout: float):
        import httpx

        path, content = call.http()
        try:
            response = await self.http.post(f"{replica.url}{path}", content=content, timeout=timeout)
        except httpx.TimeoutException:
            return "timeout"
        except httpx.HTTPError as err:
            replica.healthy, replica.reason = False, f"{type(err).__name__}: {err} (until its next health check)"
            return "error"
        return response.status_code, orjson.loads(response.content) if response.status_code == 200 else None

    async def _over_wire(self, replica: Replica, call: ShardCall, timeout: float):
        meta, payload = call.wire()
        try:
            answer, data = await self.wire.request(replica.host, replica.wire_port, meta, payload, timeout=timeout)
        except TimeoutError:
            return "timeout"
        except WireError as err:
            replica.healthy, replica.reason = False, f"{err} (until its next health check)"
            return "error"
        status = answer.pop("status", 500)
        if status == 200 and call.op == "vector":
            answer["vector"] = np.frombuffer(data, dtype="<f4")
        return status, answer

    async def search(self, pin: Pin, query: np.ndarray, k: int, exclude: list[str], deadline: float) -> dict:
        """Fans the query out to every shard for `pin.version` and merges: the answer body
        without `served` (items, coverage, per-shard details)."""
        call = ShardCall("search", pin.collection, pin.version, {"k": k, "exclude": exclude}, query)
        started = time.perf_counter()
        answers = await asyncio.gather(*(self.ask_shard(s, call, deadline) for s in range(self.shards)))
        got = [a for a in answers if a is not None]
        merged = merge_top_k([[(i, s) for i, s in a.payload["items"]] for a in got], k)
        if got:
            self.metrics.overhead.observe(max(0.0, time.perf_counter() - started - max(a.seconds for a in got)))
        coverage = len(got) / self.shards
        self.metrics.coverage.observe(coverage)
        return {
            "items": [{"id": item_id, "score": score} for item_id, score in merged],
            "coverage": coverage,
            "shards": [
                {"shard": a.shard, "version": a.payload["version"], "replica": a.replica, "attempts": a.attempts}
                for a in got
            ],
            "missing_shards": [s for s, a in enumerate(answers) if a is None],
        }

    async def stored_vector(self, pin: Pin, item_id: str, deadline: float) -> np.ndarray | None:
        shard = shard_of(item_id, self.shards)
        answer = await self.ask_shard(
            shard, ShardCall("vector", pin.collection, pin.version, {"id": item_id}), deadline
        )
        if answer is None:
            raise ApiError(
                503,
                "shard_unavailable",
                f"shard {shard} (which holds {item_id!r}) did not answer within "
                f"router.deadline_ms={self.rcfg.deadline_ms:g}",
            )
        if answer.status == 404:
            return None
        return np.asarray(answer.payload["vector"], dtype=np.float32)
