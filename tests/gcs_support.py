"""Test support for the GCS backend: the emulator process and a precondition gate.

`gcp-storage-emulator` accepts `ifGenerationMatch` and ignores it, so on its own it
cannot show that our compare-and-swap works. `GenerationGate` is a small HTTP proxy on
127.0.0.1 in front of the emulator that

- records every request the real `google-cloud-storage` client sends (so tests can
  assert that each LATEST write carries `ifGenerationMatch`), and
- enforces the precondition the way GCS documents it: the request is serialised with
  every other request, the object's current generation is read from the emulator, and a
  mismatch is answered with 412 Precondition Failed (generation 0: must not exist).

Everything else is forwarded unchanged.
"""

from __future__ import annotations

import http.client
import json
import re
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from config.loopback import free_port


class EmulatorProcess:
    """`gcp-storage-emulator` in its own process, in memory, on a free loopback port."""

    def __init__(self, bucket: str):
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gcp_storage_emulator",
                "start",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--in-memory",
                "--default-bucket",
                bucket,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"gcp-storage-emulator exited with {self.process.returncode}")
            try:
                urllib.request.urlopen(f"{self.endpoint}/storage/v1/b/{bucket}", timeout=1)
                return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("gcp-storage-emulator did not answer within 30 s")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    query: dict[str, list[str]]
    object_name: str | None
    status: int


class GenerationGate:
    def __init__(self, upstream_port: int):
        self.upstream_port = upstream_port
        self.requests: list[RecordedRequest] = []
        self._lock = threading.Lock()
        gate = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output quiet
                pass

            def _handle(self):
                gate._serve(self)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _serve(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else b""
        url = urllib.parse.urlsplit(handler.path)
        query = urllib.parse.parse_qs(url.query)
        name = _object_name(url.path, query, body)
        with self._lock:  # one request at a time: the check and the write are atomic
            wanted = query.get("ifGenerationMatch")
            if wanted is not None and name is not None:
                bucket = _bucket(url.path)
                current = self._generation(bucket, name)
                if int(wanted[0]) != current:
                    self._reply(
                        handler,
                        412,
                        json.dumps(
                            {
                                "error": {
                                    "code": 412,
                                    "message": "Precondition Failed",
                                    "errors": [{"reason": "conditionNotMet", "message": "Precondition Failed"}],
                                }
                            }
                        ).encode(),
                        {"Content-Type": "application/json"},
                    )
                    self.requests.append(RecordedRequest(handler.command, url.path, query, name, 412))
                    return
            status, headers, payload = self._forward(handler, body)
        self.requests.append(RecordedRequest(handler.command, url.path, query, name, status))
        self._reply(handler, status, payload, headers)

    def _generation(self, bucket: str, name: str) -> int:
        conn = http.client.HTTPConnection("127.0.0.1", self.upstream_port, timeout=30)
        try:
            conn.request("GET", f"/storage/v1/b/{bucket}/o/{urllib.parse.quote(name, safe='')}")
            response = conn.getresponse()
            data = response.read()
            return int(json.loads(data)["generation"]) if response.status == 200 else 0
        finally:
            conn.close()

    def _forward(self, handler, body: bytes):
        conn = http.client.HTTPConnection("127.0.0.1", self.upstream_port, timeout=60)
        try:
            headers = {k: v for k, v in handler.headers.items() if k.lower() not in ("host", "connection")}
            conn.request(handler.command, handler.path, body=body or None, headers=headers)
            response = conn.getresponse()
            payload = response.read()
            keep = {
                k: v
                for k, v in response.getheaders()
                if k.lower() not in ("transfer-encoding", "connection", "content-length")
            }
            return response.status, keep, payload
        finally:
            conn.close()

    @staticmethod
    def _reply(handler, status: int, payload: bytes, headers: dict[str, str]) -> None:
        handler.send_response(status)
        for key, value in headers.items():
            handler.send_header(key, value)
        handler.send_header("Content-Length", str(len(payload)))
        handler.end_headers()
        handler.wfile.write(payload)


def _bucket(path: str) -> str:
    match = re.search(r"/b/([^/]+)", path)
    return urllib.parse.unquote(match.group(1)) if match else ""


def _object_name(path: str, query: dict[str, list[str]], body: bytes) -> str | None:
    """The object a request is about: in the path, the `name` parameter, or the metadata
    part of a multipart upload."""
    match = re.search(r"/o/([^/?]+)", path)
    if match:
        return urllib.parse.unquote(match.group(1))
    if "name" in query:
        return query["name"][0]
    found = re.search(rb'"name":\s*"((?:[^"\\]|\\.)*)"', body[:4096])
    return json.loads(b'"' + found.group(1) + b'"') if found else None
