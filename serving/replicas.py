"""The router's replica pool: every shard's replicas (`router.replicas`), their health as
the last check saw it, and the order to try them in.

Every `router.health_interval_s` the router checks each replica with GET /v1/shard, which
says which shard it is (a replica listed under the wrong shard, or of a set of another
size, is never asked), which versions it holds and its shard-wire port, if any. A replica
that fails a request is marked unhealthy at once (`serving.fanout`) and stays so until its
next check passes."""

from __future__ import annotations

import asyncio
import itertools
import logging
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import orjson

from serving.router_metrics import RouterMetrics
from serving.state import now_iso

log = logging.getLogger("serving.router")  # the router's lines, as before the split


@dataclass
class Replica:
    """One shard server, as the health checks last saw it."""

    url: str
    shard: int
    healthy: bool = False
    reason: str = "not checked yet"
    held: dict[str, frozenset[str]] = field(default_factory=dict)  # collection -> versions
    current: dict[str, str] = field(default_factory=dict)  # collection -> the version its LATEST named
    # collection -> version -> (commit sequence, model version, dim, items, memory bytes) of what it holds
    versions: dict[str, dict[str, tuple[int, str, int, int, int]]] = field(default_factory=dict)
    checked_at: str | None = None
    wire_port: int | None = None  # the shard wire's port its last health check advertised
    host: str = field(init=False)  # of the URL: the shard wire listens on the same host

    def __post_init__(self) -> None:
        self.host = urlsplit(self.url).hostname or "127.0.0.1"

    def holds(self, collection: str, version: str) -> bool:
        return self.healthy and version in self.held.get(collection, ())

    def describe(self) -> dict:
        return {
            "url": self.url,
            "shard": self.shard,
            "healthy": self.healthy,
            "reason": self.reason,
            "held": {c: sorted(v) for c, v in self.held.items()},
            "current": dict(self.current),
            "checked_at": self.checked_at,
            "wire_port": self.wire_port,
        }


class ReplicaPool:
    """`grid[shard]`: the replicas of each shard, in the order router.replicas lists them."""

    def __init__(self, urls: list[list[str]], metrics: RouterMetrics, health_timeout_s: float):
        self.shards = len(urls)
        self.grid = [[Replica(url, shard) for url in row] for shard, row in enumerate(urls)]
        self.metrics = metrics
        self.health_timeout_s = health_timeout_s
        self._turn = [itertools.count() for _ in range(self.shards)]

    def covered(self, collection: str, version: str) -> bool:
        """Every shard has a healthy replica holding `version`."""
        return all(any(r.holds(collection, version) for r in replicas) for replicas in self.grid)

    def candidates(self, shard: int, collection: str, version: str) -> list[Replica]:
        """Replicas to try, in turn: healthy ones holding the version, rotated per request
        (spreads the load), then the others (a health check may be stale)."""
        replicas = self.grid[shard]
        start = next(self._turn[shard]) % len(replicas)
        rotated = replicas[start:] + replicas[:start]
        good = [r for r in rotated if r.holds(collection, version)]
        return good + [r for r in rotated if r not in good]

    async def check_all(self, http) -> None:
        """Checks every replica at once (GET /v1/shard with `http`, an httpx.AsyncClient)."""
        await asyncio.gather(*(self._check(http, replica) for replicas in self.grid for replica in replicas))

    async def _check(self, http, replica: Replica) -> None:
        try:
            response = await http.get(f"{replica.url}/v1/shard", timeout=self.health_timeout_s)
            body = orjson.loads(response.content) if response.status_code == 200 else None
            if body is None:
                raise RuntimeError(f"HTTP {response.status_code}")
            if (body.get("shard"), body.get("shards")) != (replica.shard, self.shards):
                raise RuntimeError(
                    f"it serves shard {body.get('shard')} of {body.get('shards')}, but router.replicas "
                    f"lists it under shard {replica.shard} of {self.shards}"
                )
            collections = body.get("collections", {})
            replica.held = {
                c: frozenset(v["version"] for v in info["versions"] if v.get("alive", True))
                for c, info in collections.items()
            }
            replica.current = {c: info["current"] for c, info in collections.items()}
            replica.versions = {
                c: {
                    v["version"]: (
                        int(v.get("sequence", 0)),
                        v.get("model_version", ""),
                        int(v.get("dim", 0)),
                        int(v.get("count", 0)),
                        int(v.get("memory_bytes", 0)),
                    )
                    for v in info["versions"]
                    if v.get("alive", True)
                }
                for c, info in collections.items()
            }
            wire = body.get("wire")
            replica.wire_port = int(wire["port"]) if isinstance(wire, dict) and wire.get("port") else None
            replica.healthy, replica.reason = True, "ok"
        except Exception as err:  # noqa: BLE001 - any failure makes the replica unhealthy
            if replica.healthy:
                log.warning("router: replica %s of shard %d is unhealthy: %s", replica.url, replica.shard, err)
            replica.healthy, replica.reason = False, f"{type(err).__name__}: {err}"
        replica.checked_at = now_iso()
        self.metrics.healthy.labels(str(replica.shard), replica.url).set(1 if replica.healthy else 0)
