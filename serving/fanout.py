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
from serving.wire import WireError, answer_within

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


async def _good_answers_or_one_bad(futures: list[asyncio.Future], version: str, timeout: float) -> None:
    """Returns once every one of `futures` (`WireClient.send`'s) has a good answer (200, from
    `version`), as soon as one has failed or answered otherwise (to retry it at once), or
    after `timeout` seconds: asyncio.wait's work without its task-like bookkeeping."""
    loop = asyncio.get_running_loop()
    waiter = loop.create_future()
    left = len(futures)

    def settled(future: asyncio.Future) -> None:
        nonlocal left
        left -= 1
        if waiter.done():
            return
        bad = future.cancelled() or future.exception() is not None
        if left == 0 or bad or future.result()[0].get("status") != 200 or future.result()[0].get("version") != version:
            waiter.set_result(None)

    for future in futures:
        future.add_done_callback(settled)
    timer = loop.call_later(timeout, lambda: waiter.done() or waiter.set_result(None))
    try:
        await waiter
    finally:
        timer.cancel()
        for future in futures:
            future.remove_done_callback(settled)


class FanOut:
    """Asks the shards of `pool`, over the shard wire (`wire`, a WireClient) or HTTP (`http`,
    an httpx.AsyncClient); both are set when the router starts."""

    def __init__(self, pool: ReplicaPool, rcfg: RouterConfig, metrics: RouterMetrics):
        self.pool, self.rcfg, self.metrics = pool, rcfg, metrics
        self.shards = pool.shards
        self.http = None
        self.wire = None
        self._counted: dict[tuple[int, str], object] = {}  # (shard, result) -> its attempts counter

    def _count(self, shard: int, result: str) -> None:
        counter = self._counted.get((shard, result))
        if counter is None:
            counter = self._counted[(shard, result)] = self.metrics.attempts.labels(str(shard), result)
        counter.inc()

    async def ask_every_shard(self, call: ShardCall, deadline: float) -> list[ShardAnswer | None]:
        """Every shard's answer (None where none came by the deadline), asked concurrently.

        The common case costs no task per shard: one frame to the first candidate of each
        shard on its open wire connection, then one wait until all have answered well, one
        has answered badly (an error, or another version) or hedge_after_ms passed. A shard
        that could not be asked that way (no connection yet, HTTP), whose first answer was
        bad or that is still waiting goes on in `ask_shard`, which retries and hedges (a
        first request still on its way is awaited there, beside any hedge).
        """
        started, sent_at = time.perf_counter(), time.monotonic()
        over_wire = self.wire is not None and self.rcfg.transport == "wire"
        meta, payload = call.wire() if over_wire else (None, b"")
        sent: list[tuple[list[Replica], asyncio.Future | None]] = []
        for shard in range(self.shards):
            candidates = self.pool.candidates(shard, call.collection, call.version)[: self.rcfg.max_attempts]
            first = candidates[0]
            future = None
            if over_wire and first.wire_port is not None:
                future = self.wire.send(first.host, first.wire_port, meta, payload)
            sent.append((candidates, future))
        futures = [f for _, f in sent if f is not None]
        try:
            if futures:
                wait = min(deadline, sent_at + self.rcfg.hedge_after_ms / 1000) - time.monotonic()
                await _good_answers_or_one_bad(futures, call.version, max(0.0, wait))
            answers: list[ShardAnswer | None] = [None] * self.shards
            rest = {}
            for shard, (candidates, future) in enumerate(sent):
                if future is None:
                    rest[shard] = self.ask_shard(shard, call, deadline, candidates, started=started)
                elif not future.done():
                    rest[shard] = self.ask_shard(
                        shard, call, deadline, candidates, started=started, first=(future, sent_at)
                    )
                else:
                    judged = self._judge(candidates[0], call, self._wire_answer(candidates[0], call, future))
                    if isinstance(judged, tuple):
                        seconds = future.result()[2] - started
                        answers[shard] = ShardAnswer(shard, judged[0], judged[1], candidates[0].url, 1, seconds)
                    else:
                        self._count(shard, judged)
                        rest[shard] = self.ask_shard(shard, call, deadline, candidates, started=started, tried=1)
            if rest:
                for shard, answer in zip(rest, await asyncio.gather(*rest.values()), strict=True):
                    answers[shard] = answer
            return answers
        finally:
            for future in futures:
                future.cancel()  # a no-op for those answered; frees the slot of any given up

    async def ask_shard(
        self,
        shard: int,
        call: ShardCall,
        deadline: float,
        candidates: list[Replica] | None = None,
        *,
        started: float | None = None,
        tried: int = 0,
        first: tuple[asyncio.Future, float] | None = None,
    ) -> ShardAnswer | None:
        """One shard's answer for `call.version`: the first good answer of up to max_attempts
        replicas (the next one started at once on an error, or after hedge_after_ms); None
        when none answered by the deadline. From `ask_every_shard`: the first `tried` of
        `candidates` answered badly already, or `first` is (the wire request to the first
        one, still on its way; time.monotonic() when it was sent); `started` is when the
        fan-out began."""
        if candidates is None:
            candidates = self.pool.candidates(shard, call.collection, call.version)[: self.rcfg.max_attempts]
        started = time.perf_counter() if started is None else started
        hedge_after = self.rcfg.hedge_after_ms / 1000
        pending: dict[asyncio.Task, Replica] = {}
        hedge_at = 0.0

        def launch(sent: asyncio.Future | None = None, at: float | None = None) -> None:
            nonlocal tried, hedge_at
            replica = candidates[tried]
            tried += 1
            pending[asyncio.ensure_future(self._attempt(replica, call, deadline, sent))] = replica
            hedge_at = (time.monotonic() if at is None else at) + hedge_after

        if first is not None:
            launch(*first)
        elif tried < len(candidates):
            launch()
        try:
            while pending:
                now = time.monotonic()
                if now >= deadline:
                    break
                wait = min(deadline, hedge_at) - now if tried < len(candidates) else deadline - now
                done, _ = await asyncio.wait(pending, timeout=max(0.0, wait), return_when=asyncio.FIRST_COMPLETED)
                if not done:  # slow: hedge on the next replica, keep waiting for both
                    if tried < len(candidates) and time.monotonic() < deadline:
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
                    self._count(shard, result)
                if not pending and tried < len(candidates):
                    launch()
            for _ in pending:
                self._count(shard, "timeout")
            return None
        finally:
            for task in pending:
                task.cancel()

    async def _attempt(self, replica: Replica, call: ShardCall, deadline: float, sent: asyncio.Future | None = None):
        """(status, body) of a good answer, or the name of the failure. `sent`: the wire
        request to this replica, already written."""
        if sent is not None or (replica.wire_port is not None and self.rcfg.transport == "wire"):
            answer = await self._over_wire(replica, call, deadline, sent)
        else:
            answer = await self._over_http(replica, call, max(0.001, deadline - time.monotonic()))
        return self._judge(replica, call, answer)

    def _judge(self, replica: Replica, call: ShardCall, answer):
        """A replica's (status, body) as the good answer it is, or the name of its failure
        (a failure's name passes through)."""
        if isinstance(answer, str):
            return answer
        status, body = answer
        if status == 404 and call.op == "vector":
            self._count(replica.shard, "ok")
            return 404, None
        if status != 200:
            if status in (409, 503):  # it no longer holds the version / is reloading
                replica.healthy, replica.reason = False, f"HTTP {status} (until its next health check)"
            return "error"
        if body.get("version") != call.version:  # never merged: another generation
            return "wrong_version"
        self._count(replica.shard, "ok")
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

    async def _over_wire(self, replica: Replica, call: ShardCall, deadline: float, sent: asyncio.Future | None):
        try:
            if sent is None:
                meta, payload = call.wire()
                sent = await self.wire.submit(
                    replica.host, replica.wire_port, meta, payload, timeout=max(0.001, deadline - time.monotonic())
                )
            await answer_within(sent, max(0.001, deadline - time.monotonic()))
        except TimeoutError:
            return "timeout"
        except WireError as err:
            replica.healthy, replica.reason = False, f"{err} (until its next health check)"
            return "error"
        return self._wire_answer(replica, call, sent)

    def _wire_answer(self, replica: Replica, call: ShardCall, future: asyncio.Future):
        """(status, body) of a settled `WireClient.send` future, or the name of its failure."""
        try:
            answer, data, _ = future.result()
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
        answers = await self.ask_every_shard(call, deadline)
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
