"""The shard wire: the router's hop to the shard servers as length-prefixed frames over one
multiplexed TCP connection per replica, instead of an HTTP request per shard.

Why: a routed request is one public HTTP request plus one hop per shard. Over HTTP (httpx
in the router, uvicorn + FastAPI + pydantic in the shard server) a routed request over two
shards cost 2.5 ms of router CPU and 1.1 ms in each shard server, and the tier served about
a twelfth of what the single service does; over the wire, 0.5 and 0.25 ms (a closed loop
on this 2-core machine, index processes included; README "The sharded tier"). The wire
keeps a hop to a struct header, a small JSON header and the raw float32 vector, and parses
answers in the event loop's own protocol callback.

Frame, both directions (little-endian):

    u32 length (of the rest) | u32 request id | u32 meta length | meta (JSON) | payload

- requests: meta `{"op": "search", "collection", "version", "k", "exclude"}` with the query
  as float32 bytes for payload; `{"op": "vector", "collection", "version", "id"}`;
  `{"op": "hello", "token"}`, the first frame of a connection when `serving.token` is set.
- answers carry the request's id and `{"status": <HTTP status>, ...}` as meta: the same body
  the HTTP route answers (`version`, `model_version`, `items`, ...), or `{"code",
  "message"}` on an error; a stored vector comes back as float32 payload.

Answers come back in any order (the shard server answers each frame in its own task), so
one connection carries many requests at once. The shard server advertises its wire port on
`/v1/shard` (the router's health check), so `router.replicas` still lists HTTP base URLs;
`router.transport = "http"` keeps the router on HTTP (e.g. through an HTTP-only proxy).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import struct
import time
from collections.abc import Awaitable, Callable

import orjson

from serving.responses import ApiError

log = logging.getLogger(__name__)

HEADER = struct.Struct("<III")  # length of the rest, request id, meta length
# A frame above this is refused and the connection closed: a search frame is ~0.5 kB plus
# its exclude list; the body limit of the HTTP routes (serving.max_body_bytes) is larger.
MAX_FRAME_BYTES = 4 << 20
# Frames being answered per connection before it stops reading (the client waits).
MAX_IN_FLIGHT = 512
OPS = ("search", "vector")

# The handler answers one request: (meta, payload) -> (body, payload); it raises ApiError.
Handler = Callable[[dict, bytes], Awaitable[tuple[dict, bytes]]]


class WireError(ConnectionError):
    """The connection failed or the peer broke the protocol: the replica is unhealthy."""


def encode(request_id: int, meta: dict, payload: bytes = b"") -> bytes:
    head = orjson.dumps(meta)
    return HEADER.pack(8 + len(head) + len(payload), request_id, len(head)) + head + payload


class _Coalescer:
    """Writes the frames queued during one turn of the event loop with one write: on
    loopback, each send() also pays for the receiver's side of TCP (~45 us here), and under
    load several requests (or answers) leave for the same peer in one turn."""

    def __init__(self, transport: asyncio.Transport):
        self.transport = transport
        self.queued: list[bytes] = []

    def write(self, frame: bytes) -> None:
        if not self.queued:
            asyncio.get_running_loop().call_soon(self._flush)
        self.queued.append(frame)

    def _flush(self) -> None:
        frames, self.queued = self.queued, []
        if not self.transport.is_closing():
            self.transport.write(b"".join(frames) if len(frames) > 1 else frames[0])


class _Frames:
    """Splits a byte stream into (request id, meta, payload) frames."""

    def __init__(self):
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[tuple[int, dict, bytes]]:
        buffer = self._buffer
        buffer += data
        frames = []
        while len(buffer) >= 4:
            (length,) = struct.unpack_from("<I", buffer)
            if length < 8 or length > MAX_FRAME_BYTES:
                raise WireError(f"frame of {length} bytes (the wire takes 8..{MAX_FRAME_BYTES})")
            if len(buffer) < 4 + length:
                break
            _, request_id, meta_length = HEADER.unpack_from(buffer)
            if meta_length > length - 8:
                raise WireError(f"meta of {meta_length} bytes in a frame of {length}")
            meta = orjson.loads(bytes(buffer[12 : 12 + meta_length]))
            if not isinstance(meta, dict):
                raise WireError("a frame's meta must be a JSON object")
            frames.append((request_id, meta, bytes(buffer[12 + meta_length : 4 + length])))
            del buffer[: 4 + length]
        return frames


class _FramedProtocol(asyncio.Protocol):
    """A connection that reads frames (`on_frames`) and writes them coalesced (`out`); a
    stream that breaks the protocol goes to `on_broken`."""

    transport: asyncio.Transport | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.out = _Coalescer(transport)
        self.frames = _Frames()

    def data_received(self, data: bytes) -> None:
        try:
            frames = self.frames.feed(data)
        except (WireError, orjson.JSONDecodeError) as err:
            self.on_broken(err)
            return
        self.on_frames(frames)

    def on_frames(self, frames: list[tuple[int, dict, bytes]]) -> None:
        raise NotImplementedError

    def on_broken(self, err: Exception) -> None:
        raise NotImplementedError


# -- the shard server's side ---------------------------------------------------------------


class _ServerProtocol(_FramedProtocol):
    def __init__(self, handler: Handler, token: str | None, observe: Callable[[str, int, float], None]):
        self.handler, self.token, self.observe = handler, token, observe
        self.authenticated = not token
        self.in_flight: set[asyncio.Task] = set()
        self.paused = False

    def on_broken(self, err: Exception) -> None:
        self._refuse(0, 400, "invalid_frame", str(err))

    def on_frames(self, frames: list[tuple[int, dict, bytes]]) -> None:
        for request_id, meta, payload in frames:
            if self.transport.is_closing():  # refused: what follows is not read
                return
            if not self.authenticated:
                self._hello(request_id, meta)
                continue
            task = asyncio.get_running_loop().create_task(self._answer(request_id, meta, payload))
            self.in_flight.add(task)
            task.add_done_callback(self._done)
        if len(self.in_flight) >= MAX_IN_FLIGHT and not self.paused:
            self.paused = True
            self.transport.pause_reading()

    def _hello(self, request_id: int, meta: dict) -> None:
        token = meta.get("token") if meta.get("op") == "hello" else None
        if not isinstance(token, str) or not hmac.compare_digest(token.encode(), self.token.encode()):
            self._refuse(request_id, 401, "unauthorized", "the first frame must be a hello with serving.token")
            return
        self.authenticated = True
        self.transport.write(encode(request_id, {"status": 200}))

    def _refuse(self, request_id: int, status: int, code: str, message: str) -> None:
        self.transport.write(encode(request_id, {"status": status, "code": code, "message": message}))
        self.transport.close()

    async def _answer(self, request_id: int, meta: dict, payload: bytes) -> None:
        started = time.perf_counter()
        op = meta.get("op") if meta.get("op") in OPS else "unknown"  # a metrics label: a closed set
        try:
            body, out = await self.handler(meta, payload)
            answer, status = {"status": 200, **body}, 200
        except ApiError as err:
            answer, out, status = {"status": err.status, "code": err.code, "message": err.message}, b"", err.status
        except Exception as err:  # noqa: BLE001 - answered, logged, and the connection lives on
            log.exception("wire %s request failed", op)
            answer, out, status = (
                {"status": 500, "code": "internal", "message": f"{type(err).__name__}: {err}"},
                b"",
                500,
            )
        if not self.transport.is_closing():
            self.out.write(encode(request_id, answer, out))
        self.observe(f"wire:{op}", status, time.perf_counter() - started)

    def _done(self, task: asyncio.Task) -> None:
        self.in_flight.discard(task)
        if self.paused and len(self.in_flight) < MAX_IN_FLIGHT // 2 and not self.transport.is_closing():
            self.paused = False
            self.transport.resume_reading()

    def connection_lost(self, exc) -> None:
        for task in self.in_flight:
            task.cancel()


async def start_server(
    handler: Handler, host: str, port: int, *, token: str | None, observe: Callable[[str, int, float], None]
) -> asyncio.Server:
    """Listens on host:port (0: a free port; `server.sockets[0].getsockname()[1]` says which)."""
    loop = asyncio.get_running_loop()
    return await loop.create_server(lambda: _ServerProtocol(handler, token, observe), host, port)


# -- the router's side ---------------------------------------------------------------------


class _ClientProtocol(_FramedProtocol):
    def __init__(self, address: str):
        self.address = address
        self.waiting: dict[int, asyncio.Future] = {}
        self.lost: Exception | None = None

    def on_broken(self, err: Exception) -> None:
        self.transport.close()
        self._fail(WireError(f"{self.address} broke the wire protocol: {err}"))

    def on_frames(self, frames: list[tuple[int, dict, bytes]]) -> None:
        arrived = time.perf_counter()
        for request_id, meta, payload in frames:
            future = self.waiting.pop(request_id, None)
            if future is not None and not future.done():  # None: its caller gave up (deadline)
                future.set_result((meta, payload, arrived))

    @property
    def usable(self) -> bool:
        return self.lost is None and not self.transport.is_closing()

    def connection_lost(self, exc) -> None:
        self._fail(WireError(f"connection to {self.address} lost" + (f": {exc}" if exc else "")))

    def _fail(self, err: Exception) -> None:
        self.lost = self.lost or err  # the first cause: a protocol error, then the close it led to
        waiting, self.waiting = self.waiting, {}
        for future in waiting.values():
            if not future.done():
                future.set_exception(err)


def _expire(future: asyncio.Future) -> None:
    if not future.done():
        future.set_exception(TimeoutError())


async def answer_within(future: asyncio.Future, timeout: float) -> tuple[dict, bytes, float]:
    """What a `WireClient.send` future resolves to, or TimeoutError after `timeout` seconds.
    A timer, not asyncio.wait_for: this runs once per shard of a routed request, and
    wait_for costs a task-like wrapper and callbacks each time."""
    timer = asyncio.get_running_loop().call_later(timeout, _expire, future)
    try:
        return await future
    finally:
        timer.cancel()


class WireClient:
    """One multiplexed connection per shard server (host, wire port), opened on first use and
    again after it is lost; `token` is sent in a hello frame first when set."""

    def __init__(self, token: str | None = None, connect_timeout_s: float = 1.0):
        self.token = token
        self.connect_timeout_s = connect_timeout_s
        self._connections: dict[tuple[str, int], _ClientProtocol] = {}
        self._connecting: dict[tuple[str, int], asyncio.Future] = {}
        self._ids = 0

    async def request(
        self, host: str, port: int, meta: dict, payload: bytes = b"", *, timeout: float
    ) -> tuple[dict, bytes]:
        """The answer's (meta, payload); WireError if the connection fails, TimeoutError at
        `timeout` seconds (a late answer is dropped when it arrives)."""
        deadline = time.monotonic() + timeout
        future = await self.submit(host, port, meta, payload, timeout=timeout)
        answer, data, _ = await answer_within(future, max(0.001, deadline - time.monotonic()))
        return answer, data

    async def submit(self, host: str, port: int, meta: dict, payload: bytes = b"", *, timeout: float) -> asyncio.Future:
        """`send`, opening the connection first when none is open: TimeoutError if that takes
        over `timeout` seconds, WireError if it fails."""
        future = self.send(host, port, meta, payload)
        if future is None:
            protocol = await asyncio.wait_for(self._connection(host, port), max(0.001, timeout))
            if protocol.lost is not None:  # lost between the connect and now
                raise protocol.lost
            future = self._send(protocol, meta, payload)
        return future

    def send(self, host: str, port: int, meta: dict, payload: bytes = b"") -> asyncio.Future | None:
        """Writes a request on the open connection to host:port, without waiting: the future
        of its answer's (meta, payload, perf_counter() when it arrived), failed with
        WireError if the connection fails; None if no connection is open (`submit` opens
        one). Cancel the future, or pass it to `answer_within`, to give up on it.

        The router's common case: one frame per shard and one wait for them all, without a
        task per shard (`serving.fanout`)."""
        protocol = self._connections.get((host, port))
        if protocol is None or not protocol.usable:
            return None
        return self._send(protocol, meta, payload)

    def _send(self, protocol: _ClientProtocol, meta: dict, payload: bytes) -> asyncio.Future:
        self._ids = (self._ids + 1) & 0xFFFFFFFF
        request_id = self._ids
        future = asyncio.get_running_loop().create_future()
        protocol.waiting[request_id] = future
        # Whoever gives up on it (deadline, cancel) frees its slot; an answer pops it first.
        future.add_done_callback(lambda _f: protocol.waiting.pop(request_id, None))
        protocol.out.write(encode(request_id, meta, payload))
        return future

    async def _connection(self, host: str, port: int) -> _ClientProtocol:
        key = (host, port)
        protocol = self._connections.get(key)
        if protocol is not None and protocol.usable:
            return protocol
        pending = self._connecting.get(key)
        if pending is None:  # one connect per address at a time; the others wait for it
            pending = self._connecting[key] = asyncio.ensure_future(self._connect(host, port))
            pending.add_done_callback(lambda _f: self._connecting.pop(key, None))
        return await asyncio.shield(pending)

    async def _connect(self, host: str, port: int) -> _ClientProtocol:
        address = f"{host}:{port}"
        loop = asyncio.get_running_loop()
        try:
            _, protocol = await asyncio.wait_for(
                loop.create_connection(lambda: _ClientProtocol(address), host, port), self.connect_timeout_s
            )
        except (OSError, TimeoutError) as err:
            raise WireError(f"cannot connect to {address}: {err}") from err
        if self.token:
            hello = self._send(protocol, {"op": "hello", "token": self.token}, b"")
            meta, _, _ = await answer_within(hello, self.connect_timeout_s)
            if meta.get("status") != 200:
                protocol.transport.close()
                raise WireError(f"{address} refused the hello: {meta.get('message')}")
        self._connections[(host, port)] = protocol
        return protocol

    def close(self) -> None:
        for protocol in self._connections.values():
            if protocol.transport is not None:
                protocol.transport.close()
        self._connections.clear()
