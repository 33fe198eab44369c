"""Assembling and running the service: `build_service` (config → app + reloader) and uvicorn.

`serve()` is what `ebr serve` runs in the foreground; `ServerThread` runs the same app on a
loopback socket inside the current process (tests) and always stops it.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI

from artifacts import ArtifactStore
from config import EbrConfig
from config.settings import REPO_DIR
from serving.app import create_app
from serving.metrics import ServingMetrics
from serving.reloader import Reloader

log = logging.getLogger(__name__)

SWITCH_INTERVAL_S = 0.0005


@dataclass
class Service:
    app: FastAPI
    reloader: Reloader


def cache_dir_of(cfg: EbrConfig) -> Path:
    return Path(cfg.serving.cache_dir) if cfg.serving.cache_dir else REPO_DIR / "var" / "serving-cache"


def build_service(cfg: EbrConfig, *, poll_interval_s: float | None = None, start_reloader: bool = True) -> Service:
    """The app and its reloader from the configuration (nothing is loaded until the poller runs)."""
    metrics = ServingMetrics()
    reloader = Reloader(
        ArtifactStore.from_config(cfg),
        cache_dir_of(cfg),
        metrics,
        poll_interval_s=poll_interval_s or cfg.serving.poll_interval_s,
        keep_cached_versions=cfg.serving.keep_cached_versions,
        searcher=cfg.serving.searcher,
        reload_nice=cfg.serving.reload_nice,
        reload_idle=cfg.serving.reload_idle,
        max_load_crashes=cfg.serving.max_load_crashes,
        load_retry_backoff_s=cfg.serving.load_retry_backoff_s,
        load_retry_backoff_max_s=cfg.serving.load_retry_backoff_max_s,
    )
    return Service(create_app(cfg.serving, reloader, start_reloader=start_reloader), reloader)


class _CoalescingTransport:
    """A transport whose response head waits for the body's first write, so a response
    goes to the socket in one send instead of two.

    uvicorn writes a response's status line and headers when the app sends
    `http.response.start`, and the body on `http.response.body`: two `send` calls and two
    TCP segments for every answer, each read by the client on its own. The head (a write
    that starts with a non-1xx status line and ends the header block) is held and written
    with the next write; `flush` (at the end of every response, before a close) writes
    whatever is still held, e.g. the head of a body-less answer. Interim 100 Continue
    answers are never held: the client waits for them. Everything else is the transport's.
    """

    def __init__(self, transport):
        self._transport = transport
        self._held = b""

    def write(self, data: bytes) -> None:
        if self._held:
            data, self._held = self._held + data, b""
        elif data[:9] == b"HTTP/1.1 " and data[9:10] != b"1" and data.endswith(b"\r\n\r\n"):
            self._held = data
            return
        self._transport.write(data)

    def writelines(self, chunks) -> None:
        self.write(b"".join(chunks))

    def flush(self) -> None:
        if self._held:
            data, self._held = self._held, b""
            self._transport.write(data)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str):
        return getattr(self._transport, name)


def http_protocol(read_timeout_s: float):
    """uvicorn's httptools protocol with two changes.

    - A connection whose request headers are not complete `read_timeout_s` after it opened
      or after its request began is closed with a 408 (uvicorn itself only times out idle
      keep-alive connections: a client sending a header byte every few seconds would hold
      its connection forever). The body's deadline is the Gatekeeper's.
    - A response's head and body leave in one write (`_CoalescingTransport`).
    """
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class ServiceHttpProtocol(HttpToolsProtocol):
        _header_timer = None
        _headers_pending = False  # a request's headers began and are not complete

        def _arm_header_timer(self) -> None:
            if self._header_timer is None:
                self._header_timer = self.loop.call_later(read_timeout_s, self._headers_timed_out)

        def _disarm_header_timer(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def connection_made(self, transport) -> None:
            super().connection_made(_CoalescingTransport(transport))
            self._arm_header_timer()

        def connection_lost(self, exc) -> None:
            self._disarm_header_timer()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            # A request whose headers began in this read and did not end in it. Nearly
            # every request's headers arrive in one read: no timer is set and cancelled
            # for those (a loop timer per request was 1-2% of the service's CPU).
            if self._headers_pending:
                self._arm_header_timer()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._headers_pending = True

        def on_headers_complete(self) -> None:
            self._headers_pending = False
            self._disarm_header_timer()
            super().on_headers_complete()

        def on_response_complete(self) -> None:
            self.transport.flush()
            super().on_response_complete()
            if not self._headers_pending:  # idle now: uvicorn's keep-alive timeout takes over
                self._disarm_header_timer()

        def _headers_timed_out(self) -> None:
            self._header_timer = None
            if self.transport.is_closing() or (self.cycle is not None and not self.cycle.response_complete):
                return
            message = (
                f"request headers not received within serving.request_read_timeout_s={read_timeout_s:g} s".encode()
            )
            self.transport.write(
                b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
                b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(message), message)
            )
            self.transport.close()

    return ServiceHttpProtocol


def uvicorn_config(app: FastAPI, host: str, port: int, read_timeout_s: float = 10.0):
    import uvicorn

    return uvicorn.Config(
        app,
        host=host,
        port=port,
        lifespan="on",
        access_log=False,
        log_level="warning",
        loop="uvloop",
        http=http_protocol(read_timeout_s),  # httptools: the fastest parser uvicorn offers
        timeout_graceful_shutdown=10,
    )


def serve(
    cfg: EbrConfig, *, host: str | None = None, port: int | None = None, poll_interval_s: float | None = None
) -> None:
    """Runs the service in the foreground until interrupted (SIGINT/SIGTERM stop it cleanly)."""
    import uvicorn

    # While the reloader thread runs Python code (building a new version's id maps), the
    # event loop waits for the GIL up to one switch interval per hand-over (5 ms by
    # default), several times per request. A shorter interval bounds that convoy; with
    # no reload running, only the event loop thread is busy and nothing changes.
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    service = build_service(cfg, poll_interval_s=poll_interval_s)
    host = host or cfg.serving.host
    port = cfg.serving.port if port is None else port
    if host not in ("127.0.0.1", "localhost", "::1") and not cfg.serving.token:
        log.warning("serving on %s without serving.token: anyone who can reach the port can query", host)
    uvicorn.Server(uvicorn_config(service.app, host, port, cfg.serving.request_read_timeout_s)).run()


class ServerThread:
    """The app served by uvicorn on 127.0.0.1:<free port> in a background thread.

    with ServerThread(service.app) as server:
        httpx.get(f"{server.url}/healthz")
    """

    def __init__(self, app: FastAPI, host: str = "127.0.0.1"):
        import uvicorn

        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((host, 0))  # the kernel picks a free port; no race with other tests
        self.port = self._socket.getsockname()[1]
        self.url = f"http://{host}:{self.port}"
        read_timeout_s = getattr(app.state, "request_read_timeout_s", 10.0)  # set by create_app
        self.server = uvicorn.Server(uvicorn_config(app, host, self.port, read_timeout_s))
        self._thread = threading.Thread(target=self._run, name="ebr-serving-test-server", daemon=True)

    def _run(self) -> None:
        asyncio.run(self.server.serve(sockets=[self._socket]))

    def start(self, timeout: float = 20.0) -> ServerThread:
        self._thread.start()
        deadline = threading.Event()
        for _ in range(int(timeout / 0.02)):
            if self.server.started:
                return self
            if not self._thread.is_alive():
                break
            deadline.wait(0.02)
        self.stop()
        raise RuntimeError(f"uvicorn did not start on {self.url} within {timeout} s")

    def stop(self) -> None:
        self.server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(30)
        self._socket.close()

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
