"""The router's Prometheus metrics, in a registry of its own (`ebr route`'s /metrics)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from serving.metrics import LATENCY_BUCKETS, RequestObserver


class RouterMetrics:
    """Prometheus metrics of the router, in a registry of its own.

    ebr_router_requests_total{endpoint,status}, ebr_router_request_seconds{endpoint}
    ebr_router_shard_attempts_total{shard,result}   ok / error / timeout / wrong_version
    ebr_router_hedges_total{shard}                  attempts started because one was slow
    ebr_router_coverage                             histogram of the answers' coverage
    ebr_router_fanout_overhead_seconds              fan-out + merge minus the slowest shard
    ebr_router_pinned_info{collection,version,model_version}
    ebr_router_replica_healthy{shard,replica}
    ebr_router_switches_total{collection}
    """

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("ebr_router_requests", "Requests answered", ["endpoint", "status"], registry=r)
        self.latency = Histogram(
            "ebr_router_request_seconds",
            "Request latency inside the router",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        # observe_request(endpoint, status, seconds): one answered request
        self.observe_request = RequestObserver(self.requests, self.latency)
        self.attempts = Counter(
            "ebr_router_shard_attempts", "Requests to shard replicas", ["shard", "result"], registry=r
        )
        self.hedges = Counter("ebr_router_hedges", "Hedged attempts (a replica was slow)", ["shard"], registry=r)
        self.coverage = Histogram(
            "ebr_router_coverage", "Share of shards in an answer", buckets=(0.25, 0.5, 0.75, 0.99, 1.0), registry=r
        )
        self.overhead = Histogram(
            "ebr_router_fanout_overhead_seconds",
            "Fan-out and merge time beyond the slowest shard",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.pinned = Gauge(
            "ebr_router_pinned_info",
            "The pinned shard-set versions (value 1)",
            ["collection", "version", "model_version"],
            registry=r,
        )
        self.healthy = Gauge(
            "ebr_router_replica_healthy",
            "1 while the replica passes its health check",
            ["shard", "replica"],
            registry=r,
        )
        self.switches = Counter("ebr_router_switches", "Moves of a pinned version", ["collection"], registry=r)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
