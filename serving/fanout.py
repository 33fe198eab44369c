"""The router's fan-out: a query to one replica of every shard, concurrently, for one named
version, and the merge of their answers by score (each id once).

A replica that errs, refuses the connection or answers with another version is replaced
at once by the next replica of its shard; one that has not answered after
`router.hedge_after_ms` is hedged (asked on another replica too; the first good answer
wins), up to `router.max_attempts` per shard, all within the request's deadline. An answer
that names another version is discarded like an error, so no answer merges two generations.
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

if TYPE_CHECKING:
    from serving.router import Pin


@dataclass(frozen=True)
class ShardAnswer:
    shard: int
    status: int  # 200, or 404 (unknown id on /v1/vector)
    payload: dict | None
    replica: str | None
    attempts: int
    seconds: float


class FanOut:
    """Asks the shards of `pool` with `http` (an httpx.AsyncClient, set when the router starts)."""

    def __init__(self, pool: ReplicaPool, rcfg: RouterConfig, metrics: RouterMetrics):
        self.pool, self.rcfg, self.metrics = pool, rcfg, metrics
        self.shards = pool.shards
        self.http = None

    async def ask_shard(self, shard: int, path: str, body: dict, version: str, deadline: float) -> ShardAnswer | None:
        """One shard's answer for `version`: the first good answer of up to max_attempts
        replicas (the next one started at once on an error, or after hedge_after_ms); None
        when none answered by the deadline."""
        collection = path.rsplit("/", 1)[1]
        candidates = self.pool.candidates(shard, collection, version)[: self.rcfg.max_attempts]
        payload = orjson.dumps(body)
        started = time.perf_counter()
        pending: dict[asyncio.Task, Replica] = {}
        tried = 0

        def launch() -> None:
            nonlocal tried
            replica = candidates[tried]
            tried += 1
            pending[asyncio.create_task(self._attempt(replica, path, payload, version, deadline))] = replica

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

    async def _attempt(self, replica: Replica, path: str, payload: bytes, version: str, deadline: float):
        """(status, body) of a good answer, or the name of the failure."""
        import httpx

        try:
            response = await self.http.post(
                f"{replica.url}{path}", content=payload, timeout=max(0.001, deadline - time.monotonic())
            )
        except httpx.TimeoutException:
            return "timeout"
        except httpx.HTTPError as err:
            replica.healthy, replica.reason = False, f"{type(err).__name__}: {err} (until its next health check)"
            return "error"
        if response.status_code == 404 and path.startswith("/v1/vector/"):
            self.metrics.attempts.labels(str(replica.shard), "ok").inc()
            return 404, None
        if response.status_code != 200:
            if response.status_code in (409, 503):  # it no longer holds the version / is reloading
                replica.healthy, replica.reason = False, f"HTTP {response.status_code} (until its next health check)"
            return "error"
        body = orjson.loads(response.content)
        if body.get("version") != version:  # never merged: another generation
            return "wrong_version"
        self.metrics.attempts.labels(str(replica.shard), "ok").inc()
        return 200, body

    async def search(self, pin: Pin, query: np.ndarray, k: int, exclude: list[str], deadline: float) -> dict:
        """Fans the query out to every shard for `pin.version` and merges: the answer body
        without `served` (items, coverage, per-shard details)."""
        body = {"embedding": query.tolist(), "k": k, "exclude": exclude, "version": pin.version}
        path = f"/v1/search/{pin.collection}"
        started = time.perf_counter()
        answers = await asyncio.gather(
            *(self.ask_shard(s, path, body, pin.version, deadline) for s in range(self.shards))
        )
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
            shard, f"/v1/vector/{pin.collection}", {"id": item_id, "version": pin.version}, pin.version, deadline
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
