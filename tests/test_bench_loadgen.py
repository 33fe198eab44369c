"""benchmarks/loadgen.py against a small real HTTP/1.1 server on loopback (no service, no index).

The server answers every POST /v1/retrieve/stories with index version "v1" (and the
pair the soak reads) and GET /readyz with 200, so every request must come back 200,
name v1, and the fixed-rate generators must send about rate x duration requests.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from benchmarks import loadgen, wrk_load

REPO = Path(__file__).resolve().parents[1]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the generators expect
    users_asked: set[str] = set()

    def _answer(self, payload: dict) -> None:
        body = json.dumps(payload, separators=(",", ":")).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):  # noqa: N802 - the http.server API
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        assert self.path == "/v1/retrieve/stories" and request["k"] == loadgen.K
        assert self.headers["Content-Type"] == "application/json"
        _Handler.users_asked.add(request["user_id"])
        served = {"index_version": "v1", "user_embeddings_version": "u1", "model_version": "m1"}
        self._answer({"index_version": "v1", "served": served, "user_id": request["user_id"]})

    def do_GET(self):  # noqa: N802
        self._answer({"ready": True})

    def log_message(self, *args):
        pass


@pytest.fixture
def port():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def test_the_serving_generator_at_a_fixed_rate(port, tmp_path):
    rows = loadgen.run_loadgen(
        port, "rate", duration=1.0, rate=100.0, concurrency=2, users=10, workdir=tmp_path, seed=0
    )
    assert (tmp_path / "loadgen-rate-0.npz").is_file()  # the name run_all's latency extract reads
    assert len(rows["start"]) == 100  # rate x duration, all sent within the phase
    assert (rows["status"] == 200).all() and list(rows["names"]) == ["v1"] and (rows["version"] == 0).all()
    summary = loadgen.summarize(rows)
    assert summary["requests"] == 100 and summary["failed"] == 0
    assert 90 <= summary["qps"] <= 110  # 100 scheduled sends over ~0.99 s
    assert loadgen.summarize(rows, rows["start"] < rows["start"].min())["requests"] == 0


def test_the_soak_generator_records_the_pair_and_samples_readyz(port, tmp_path):
    out = tmp_path / "soak.npz"
    subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "loadgen.py"),
            "soak",
            f"--port={port}",
            "--rate=50",
            "--duration=1",
            "--concurrency=2",
            "--users=10",
            f"--out={out}",
        ],
        check=True,
        timeout=60,
    )
    rows = np.load(out)
    assert len(rows["start"]) == 50 and (np.diff(rows["start"]) >= 0).all()  # sorted by send time
    assert (rows["status"] == 200).all() and set(rows["code"]) == {""}
    assert set(rows["index_version"]) == {"v1"} and set(rows["users_version"]) == {"u1"}
    assert set(rows["model_version"]) == {"m1"}
    # /readyz every 0.1 s over the 1 s phase (the first sample at the start).
    assert 5 <= len(rows["readyz_at"]) <= 12 and (rows["readyz_status"] == 200).all()


@pytest.mark.skipif(wrk_load.wrk_path() is None, reason="wrk is not installed (`make wrk`; `make test` installs it)")
def test_wrk_sends_the_same_requests_in_a_closed_loop(port):
    _Handler.users_asked = set()
    got = wrk_load.run_wrk(port, duration=1, concurrency=2, users=50)
    assert got["tool"] == "wrk" and got["requests"] > 20 and got["failed"] == 0, got
    assert got["qps"] > 20 and 0 < got["p50_ms"] <= got["p99_ms"] <= got["max_ms"]
    assert got["load_generator_cpu_ms_per_request"] > 0
    # random known users, as loadgen.py asks for them: "u<i>", i < users
    assert len(_Handler.users_asked) > 10 and all(0 <= int(u[1:]) < 50 for u in _Handler.users_asked)


def test_wrk_refuses_a_run_that_could_measure_nothing():
    with pytest.raises(ValueError, match="must be at least 1"):
        wrk_load.run_wrk(1, duration=8, concurrency=16, users=0)
