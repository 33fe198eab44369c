"""The shard wire (`serving.wire`) between a real server and client on loopback, in one
event loop: frames split anywhere, answers out of order, the token's hello, deadlines,
errors, a broken peer and reconnection."""

from __future__ import annotations

import asyncio
import socket
import struct

import pytest

from serving import wire
from serving.responses import ApiError
from serving.wire import WireClient, WireError, _Frames, encode


def test_frames_split_at_every_byte_come_out_whole():
    stream = encode(7, {"op": "search", "k": 3}, b"\x00\x00\x80?") + encode(8, {"status": 200}) + encode(9, {})
    frames = _Frames()
    out = []
    for i in range(len(stream)):
        out += frames.feed(stream[i : i + 1])
    assert out == [(7, {"op": "search", "k": 3}, b"\x00\x00\x80?"), (8, {"status": 200}, b""), (9, {}, b"")]


def test_a_frame_over_the_limit_or_with_a_bad_meta_length_is_refused():
    with pytest.raises(WireError, match="frame of"):
        _Frames().feed(struct.pack("<I", wire.MAX_FRAME_BYTES + 1))
    with pytest.raises(WireError, match="meta of 99 bytes"):
        _Frames().feed(struct.pack("<IIII", 12, 1, 99, 0))


async def _echo(meta: dict, payload: bytes) -> tuple[dict, bytes]:
    """Sleeps `meta["sleep"]` seconds, then answers; raises what `meta["raise"]` names."""
    await asyncio.sleep(meta.get("sleep", 0))
    if meta.get("raise") == "api":
        raise ApiError(409, "version_not_held", "not that one")
    if meta.get("raise") == "bug":
        raise KeyError("oops")
    return {"echo": meta.get("n")}, payload[::-1]


def _run(scenario, *, token: str | None = None):
    """Runs `scenario(client, port, observed)` against a wire server of `_echo`."""
    observed: list[tuple[str, int]] = []

    async def main():
        server = await wire.start_server(
            _echo, "127.0.0.1", 0, token=token, observe=lambda op, status, _s: observed.append((op, status))
        )
        port = server.sockets[0].getsockname()[1]
        client = WireClient(token)
        try:
            return await scenario(client, port, observed)
        finally:
            client.close()
            server.close()
            await server.wait_closed()

    return asyncio.run(main())


def test_answers_come_back_to_their_callers_in_any_order():
    async def scenario(client, port, observed):
        slow = client.request("127.0.0.1", port, {"op": "x", "n": 1, "sleep": 0.2}, b"ab", timeout=2)
        fast = client.request("127.0.0.1", port, {"op": "x", "n": 2}, b"cd", timeout=2)
        answers = await asyncio.gather(slow, fast)
        assert [a for a, _ in answers] == [{"status": 200, "echo": 1}, {"status": 200, "echo": 2}]
        assert [p for _, p in answers] == [b"ba", b"dc"]
        assert observed == [("wire:unknown", 200), ("wire:unknown", 200)]  # an op outside OPS: one label
        assert len(client._connections) == 1  # both on one connection

    _run(scenario)


def test_errors_are_answers_and_the_connection_lives_on():
    async def scenario(client, port, observed):
        meta, _ = await client.request("127.0.0.1", port, {"op": "x", "raise": "api"}, timeout=2)
        assert meta == {"status": 409, "code": "version_not_held", "message": "not that one"}
        meta, _ = await client.request("127.0.0.1", port, {"op": "x", "raise": "bug"}, timeout=2)
        assert meta["status"] == 500 and meta["code"] == "internal" and "KeyError" in meta["message"]
        meta, _ = await client.request("127.0.0.1", port, {"op": "x", "n": 3}, timeout=2)
        assert meta == {"status": 200, "echo": 3}

    _run(scenario)


def test_a_late_answer_is_dropped_and_the_next_request_gets_its_own():
    async def scenario(client, port, observed):
        with pytest.raises(TimeoutError):
            await client.request("127.0.0.1", port, {"op": "x", "n": 1, "sleep": 0.3}, timeout=0.05)
        meta, _ = await client.request("127.0.0.1", port, {"op": "x", "n": 2, "sleep": 0.4}, timeout=2)
        assert meta == {"status": 200, "echo": 2}  # not the late answer of n=1, which arrived first
        protocol = next(iter(client._connections.values()))
        assert protocol.waiting == {}

    _run(scenario)


def test_the_token_is_checked_once_per_connection():
    async def scenario(client, port, observed):
        meta, _ = await client.request("127.0.0.1", port, {"op": "x", "n": 1}, timeout=2)
        assert meta == {"status": 200, "echo": 1}
        stranger = WireClient(None)
        try:
            for n in (2, 3):  # the server hangs up after its 401; a request after that connects again
                meta, _ = await stranger.request("127.0.0.1", port, {"op": "x", "n": n}, timeout=2)
                assert meta["status"] == 401 and meta["code"] == "unauthorized"
                await asyncio.sleep(0.1)  # the hang-up arrives
        finally:
            stranger.close()
        wrong = WireClient("guess")
        try:
            with pytest.raises(WireError, match="refused the hello"):
                await wrong.request("127.0.0.1", port, {"op": "x"}, timeout=2)
        finally:
            wrong.close()
        assert observed == [("wire:unknown", 200)]  # nothing unauthenticated was answered

    _run(scenario, token="s3cret")


def test_a_lost_connection_fails_its_requests_and_the_next_one_reconnects():
    async def scenario(client, port, observed):
        pending = asyncio.ensure_future(client.request("127.0.0.1", port, {"op": "x", "sleep": 5}, timeout=10))
        await asyncio.sleep(0.1)
        next(iter(client._connections.values())).transport.abort()  # the peer is gone
        with pytest.raises(WireError, match="lost"):
            await pending
        meta, _ = await client.request("127.0.0.1", port, {"op": "x", "n": 4}, timeout=2)
        assert meta == {"status": 200, "echo": 4}

    _run(scenario)


def test_nothing_listening_and_a_peer_that_breaks_the_protocol_are_wire_errors():
    async def scenario(client, port, observed):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            closed = s.getsockname()[1]
        with pytest.raises(WireError, match="cannot connect"):
            await client.request("127.0.0.1", closed, {"op": "x"}, timeout=2)

        async def garbage(reader, writer):
            writer.write(struct.pack("<I", 3))  # a frame shorter than its header
            await writer.drain()

        bad = await asyncio.start_server(garbage, "127.0.0.1", 0)
        try:
            with pytest.raises(WireError, match="broke the wire protocol"):
                await client.request("127.0.0.1", bad.sockets[0].getsockname()[1], {"op": "x"}, timeout=2)
        finally:
            bad.close()

    _run(scenario)


def test_a_server_refuses_an_oversized_frame_and_hangs_up():
    async def scenario(client, port, observed):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(struct.pack("<III", wire.MAX_FRAME_BYTES + 1, 5, 0))
        answer = _Frames().feed(await reader.read(1000))
        assert answer[0][1]["status"] == 400 and answer[0][1]["code"] == "invalid_frame"
        assert await reader.read(10) == b""  # closed
        writer.close()

    _run(scenario)
