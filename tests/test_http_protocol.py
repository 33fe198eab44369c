"""The service's uvicorn protocol (`serving.server.http_protocol`): a response's head and
body leave in one write, and nothing that must go out alone (100 Continue, the head of a
body-less answer, a streamed answer's chunks) waits."""

from __future__ import annotations

import socket
import time

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from serving.server import ServerThread, _CoalescingTransport


class RecordingTransport:
    """The part of asyncio.Transport the proxy touches, recording every write."""

    def __init__(self):
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n"


def test_head_and_body_are_one_write():
    inner = RecordingTransport()
    transport = _CoalescingTransport(inner)
    transport.write(HEAD)
    assert inner.writes == []
    transport.write(b"{}")
    assert inner.writes == [HEAD + b"{}"]
    transport.flush()  # nothing held: nothing more written
    assert inner.writes == [HEAD + b"{}"]
    transport.write(HEAD)
    transport.writelines([b"{", b"}"])  # never around the held head
    assert inner.writes[-1] == HEAD + b"{}"


def test_a_held_head_is_flushed_at_the_end_of_a_response_and_before_a_close():
    inner = RecordingTransport()
    transport = _CoalescingTransport(inner)
    transport.write(b"HTTP/1.1 204 No Content\r\n\r\n")
    transport.flush()
    assert inner.writes == [b"HTTP/1.1 204 No Content\r\n\r\n"]
    transport.write(HEAD)
    transport.close()
    assert inner.writes[-1] == HEAD and inner.closed


def test_interim_answers_and_bodies_are_never_held():
    inner = RecordingTransport()
    transport = _CoalescingTransport(inner)
    transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    assert inner.writes == [b"HTTP/1.1 100 Continue\r\n\r\n"]
    transport.write(b"a chunk\r\n")
    assert inner.writes[-1] == b"a chunk\r\n"
    assert transport.is_closing() is False  # everything else is the transport's


def _app() -> FastAPI:
    app = FastAPI()

    @app.api_route("/json", methods=["GET", "HEAD"])
    async def as_json():
        return JSONResponse({"ok": True})

    @app.get("/empty")
    async def empty():
        return Response(status_code=204)

    @app.post("/echo")
    async def echo(request: Request):
        return Response(await request.body(), media_type="application/octet-stream")

    @app.get("/stream")
    async def stream():
        async def parts():
            for part in (b"one,", b"two,", b"three"):
                yield part

        return StreamingResponse(parts(), media_type="text/plain")

    return app


def _read_responses(sock: socket.socket, count: int) -> bytes:
    """Reads until `count` complete responses (by content-length or the last chunk) arrived."""
    data = b""
    while True:
        done, rest = 0, data
        while b"\r\n\r\n" in rest:
            head, rest = rest.split(b"\r\n\r\n", 1)
            headers = head.lower()
            if b"content-length:" in headers:
                length = int(headers.split(b"content-length:")[1].split(b"\r\n")[0])
                if len(rest) < length:
                    break
                rest = rest[length:]
            elif b"transfer-encoding: chunked" in headers:
                if b"0\r\n\r\n" not in rest:
                    break
                rest = rest.split(b"0\r\n\r\n", 1)[1]
            done += 1
        if done >= count:
            return data
        chunk = sock.recv(65536)
        assert chunk, f"the server closed the connection after {data!r}"
        data += chunk


def _dechunk(body: bytes) -> bytes:
    data = b""
    while True:
        size, body = body.split(b"\r\n", 1)
        if int(size, 16) == 0:
            return data
        data, body = data + body[: int(size, 16)], body[int(size, 16) + 2 :]


def test_responses_through_a_real_server_are_whole_and_in_order():
    with ServerThread(_app()) as server, socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        # Three pipelined requests on one keep-alive connection, then HEAD and a stream.
        sock.sendall(
            b"GET /json HTTP/1.1\r\nhost: x\r\n\r\n"
            b"GET /empty HTTP/1.1\r\nhost: x\r\n\r\n"
            b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\nhello"
        )
        answers = _read_responses(sock, 3)
        assert answers.startswith(b"HTTP/1.1 200 OK\r\n") and b'{"ok":true}' in answers
        assert answers.index(b"HTTP/1.1 204") < answers.index(b"hello")
        sock.sendall(b"HEAD /json HTTP/1.1\r\nhost: x\r\n\r\n")
        head = b""
        while not head.endswith(b"\r\n\r\n"):
            head += sock.recv(65536)
        assert head.startswith(b"HTTP/1.1 200") and b"content-length: 11" in head  # and no body
        sock.sendall(b"GET /stream HTTP/1.1\r\nhost: x\r\n\r\n")
        streamed = _read_responses(sock, 1)
        assert b"transfer-encoding: chunked" in streamed
        assert _dechunk(streamed.split(b"\r\n\r\n", 1)[1]) == b"one,two,three"


def test_100_continue_goes_out_before_the_body_arrives():
    with ServerThread(_app()) as server, socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\nexpect: 100-continue\r\n\r\n")
        interim = b""
        while not interim.endswith(b"\r\n\r\n"):
            interim += sock.recv(65536)  # times out (10 s) if the interim answer were held
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(b"hello")
        assert _read_responses(sock, 1).endswith(b"hello")


def _answer_and_close(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def test_a_keep_alive_request_whose_headers_stop_coming_gets_a_408():
    app = _app()
    app.state.request_read_timeout_s = 0.5  # what create_app sets from serving.request_read_timeout_s
    with ServerThread(app) as server, socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"GET /json HTTP/1.1\r\nhost: x\r\n\r\n")
        assert _read_responses(sock, 1).startswith(b"HTTP/1.1 200")
        sock.sendall(b"GET /json HTTP/1.1\r\nhost: x\r\nx-slow: ")  # the second request's headers stop
        assert _answer_and_close(sock).startswith(b"HTTP/1.1 408")


def test_headers_trickling_in_over_many_reads_get_a_408_from_their_first_byte():
    app = _app()
    app.state.request_read_timeout_s = 0.5
    with ServerThread(app) as server, socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"GET /json HTTP/1.1\r\nhost: x\r\n\r\n")
        assert _read_responses(sock, 1).startswith(b"HTTP/1.1 200")
        started = time.monotonic()
        try:
            sock.sendall(b"GET /json HTTP/1.1\r\nhost: x\r\nx-slow: ")
            for _ in range(40):  # a header byte every 0.1 s: each read is partial, none completes
                sock.sendall(b"a")
                time.sleep(0.1)
        except OSError:  # the server closed the connection
            pass
        answer = _answer_and_close(sock)
        assert answer.startswith(b"HTTP/1.1 408"), answer
        assert time.monotonic() - started < 2.0
