"""Prometheus metrics of the retrieval service, in a registry of its own.

Each `ServingMetrics` owns a fresh `CollectorRegistry`, so several services (the tests
start many in one process) never collide on metric names.

    ebr_serving_requests_total{endpoint,status}        requests answered, by route template
    ebr_serving_request_seconds{endpoint}              latency histogram (sub-millisecond buckets)
    ebr_serving_ready                                  1 when a consistent set is served
    ebr_serving_served_version_info{kind,version,model_version}   1 for what is served now
    ebr_serving_served_items{kind}                     rows in each served collection
    ebr_serving_served_bytes{kind}                     memory held by each served collection
    ebr_serving_reloads_total{kind,result}             loads of a new version: success / failure
    ebr_serving_swaps_total                            ServedState swaps
    ebr_serving_polls_total{result}                    LATEST polls: ok / error
    ebr_serving_seconds_since_last_successful_poll     computed at scrape time
    ebr_serving_waiting_for_consistent_pair            1 while the newest versions disagree on the model
    ebr_serving_retired_states                         swapped-out states still referenced (in-flight requests)
    ebr_serving_last_reload_seconds{kind}              download + verify + load + warm-up time
    ebr_serving_load_failures_total{kind,cause}        failed loads that refused nothing at once:
                                                       cause="crash" (counted toward serving.max_load_crashes)
                                                       or "store" (I/O, retried at the next poll)
    ebr_serving_refused_versions{kind}                 versions refused (bad bytes, or too many crashes)
    ebr_serving_searcher_restarts_total{kind}          dead index processes restarted from the cache
    ebr_serving_pointer_errors{kind}                   1 while that kind's LATEST cannot be read
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from artifacts.kinds import STORY_INDEX, USER_EMBEDDINGS

# Retrieval answers in well under a millisecond to tens of milliseconds; the default
# buckets (5 ms .. 10 s) would put nearly everything into the first one.
LATENCY_BUCKETS = (
    0.0002,
    0.0005,
    0.001,
    0.002,
    0.003,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
)


class RequestObserver:
    """Counts a request in `requests{endpoint,status}` and its seconds in
    `latency{endpoint}`, the service's and the router's per-request metrics.

    The labelled children are looked up once per (endpoint, status) and kept:
    prometheus_client's `labels()` takes a lock and builds its key on every call (2% of
    the service's CPU a request under saturation, py-spy). Endpoints are route templates
    and statuses HTTP codes, so the cache stays small. Neither metric is ever cleared.
    """

    def __init__(self, requests: Counter, latency: Histogram):
        self._requests, self._latency = requests, latency
        self._children: dict[tuple[str, int], tuple] = {}

    def __call__(self, endpoint: str, status: int, seconds: float) -> None:
        children = self._children.get((endpoint, status))
        if children is None:
            children = (self._requests.labels(endpoint, str(status)), self._latency.labels(endpoint))
            self._children[(endpoint, status)] = children
        children[0].inc()
        children[1].observe(seconds)


class ServingMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("ebr_serving_requests", "Requests answered", ["endpoint", "status"], registry=r)
        self.latency = Histogram(
            "ebr_serving_request_seconds",
            "Request latency inside the server",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.ready = Gauge("ebr_serving_ready", "1 when a consistent version set is served", registry=r)
        self.served_version = Gauge(
            "ebr_serving_served_version_info",
            "The versions served now (value 1)",
            ["kind", "version", "model_version"],
            registry=r,
        )
        self.served_items = Gauge("ebr_serving_served_items", "Rows in each served collection", ["kind"], registry=r)
        self.served_bytes = Gauge(
            "ebr_serving_served_bytes", "Bytes held by each served collection", ["kind"], registry=r
        )
        self.reloads = Counter("ebr_serving_reloads", "Loads of a new version", ["kind", "result"], registry=r)
        self.swaps = Counter("ebr_serving_swaps", "Swaps of the served state", registry=r)
        self.polls = Counter("ebr_serving_polls", "Polls of the LATEST pointers", ["result"], registry=r)
        self.waiting_for_pair = Gauge(
            "ebr_serving_waiting_for_consistent_pair",
            "1 while the newest story index and user embeddings come from different models",
            registry=r,
        )
        self.retired_states = Gauge(
            "ebr_serving_retired_states", "Swapped-out states not yet freed (requests still in flight)", registry=r
        )
        self.last_reload_seconds = Gauge(
            "ebr_serving_last_reload_seconds",
            "Download + verify + load + warm-up time of the last new version",
            ["kind"],
            registry=r,
        )
        self.load_failures = Counter(
            "ebr_serving_load_failures",
            "Failed loads not refused at once (crash: counted toward max_load_crashes; store: I/O)",
            ["kind", "cause"],
            registry=r,
        )
        self.refused_versions = Gauge(
            "ebr_serving_refused_versions", "Versions refused, per kind", ["kind"], registry=r
        )
        self.searcher_restarts = Counter(
            "ebr_serving_searcher_restarts", "Dead index processes restarted from the local cache", ["kind"], registry=r
        )
        self.pointer_errors = Gauge(
            "ebr_serving_pointer_errors", "1 while the kind's LATEST cannot be read", ["kind"], registry=r
        )
        # observe_request(endpoint, status, seconds): one answered request
        self.observe_request = RequestObserver(self.requests, self.latency)
        self._last_poll_ok: float | None = None
        since = Gauge(
            "ebr_serving_seconds_since_last_successful_poll",
            "Seconds since LATEST was last read successfully (-1: never)",
            registry=r,
        )
        since.set_function(self.seconds_since_last_poll)
        for result in ("success", "failure"):
            for kind in (STORY_INDEX, USER_EMBEDDINGS):
                self.reloads.labels(kind, result)  # show zeros before the first reload

    def poll_succeeded(self) -> None:
        self._last_poll_ok = time.monotonic()
        self.polls.labels("ok").inc()

    def seconds_since_last_poll(self) -> float:
        return -1.0 if self._last_poll_ok is None else time.monotonic() - self._last_poll_ok

    def show_served(self, components: dict[str, tuple[str, str, int, int]]) -> None:
        """components: kind -> (version, model_version, items, bytes) of the new state."""
        self.served_version.clear()
        self.served_items.clear()
        self.served_bytes.clear()
        for kind, (version, model_version, items, nbytes) in components.items():
            self.served_version.labels(kind, version, model_version).set(1)
            self.served_items.labels(kind).set(items)
            self.served_bytes.labels(kind).set(nbytes)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
