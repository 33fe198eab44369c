"""What `ebr serve` shows a newcomer (#16): a ready line, every swap, refusal and failed poll at
INFO in its own log, and /docs rendered from Swagger UI files it serves itself (no CDN)."""

from __future__ import annotations

import os
import queue
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from config.loopback import free_port
from serving.docs import DOCS_ASSETS, SWAGGER_UI_FILES, swagger_ui_dir
from tests.serving_support import searcher, start_service, world  # noqa: F401 - fixtures

EBR = str(Path(sys.executable).with_name("ebr"))


def test_docs_render_offline_from_swagger_ui_files_the_service_serves(world, start_service):
    world.users("u1", "m1", seed=1)
    world.index("stories", "s1", "m1", seed=2)
    _, _, client = start_service()
    page = client.get("/docs")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    urls = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert sorted(urls) == sorted(f"{DOCS_ASSETS}/{name}" for name in SWAGGER_UI_FILES)
    assert "http://" not in page.text and "https://" not in page.text  # nothing to fetch from the internet
    assert "url: '/openapi.json'" in page.text
    folder = swagger_ui_dir()
    for name, media_type in SWAGGER_UI_FILES.items():
        asset = client.get(f"{DOCS_ASSETS}/{name}")
        assert asset.status_code == 200 and asset.headers["content-type"].startswith(media_type)
        assert asset.content == (folder / name).read_bytes()
    assert b"s.SwaggerUIBundle=" in client.get(f"{DOCS_ASSETS}/swagger-ui-bundle.js").content  # what the page calls
    assert client.get(f"{DOCS_ASSETS}/index.html").status_code == 404  # only the three files
    assert client.get(f"{DOCS_ASSETS}/..%2F__init__.py").status_code == 404
    assert "/v1/retrieve/{collection}" in client.get("/openapi.json").json()["paths"]


class ServeProcess:
    """`ebr serve` as a user starts it, its stderr read line by line."""

    def __init__(self, root: str, cache: Path):
        self.port = free_port()
        args = [
            EBR,
            "--root",
            root,
            "--set",
            f"serving.cache_dir={cache}",
            "--set",
            "serving.searcher=inline",
            "serve",
            "--port",
            str(self.port),
            "--poll-interval",
            "0.2",
        ]
        self.process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ)
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stderr:
            self.lines.put(line.rstrip("\n"))

    def wait_for_line(self, pattern: str, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.2)
            except queue.Empty:
                if self.process.poll() is not None:
                    break
                continue
            self.seen.append(line)
            if re.search(pattern, line):
                return line
        raise AssertionError(f"no line matching {pattern!r} in:\n" + "\n".join(self.seen))

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.mark.slow
def test_ebr_serve_logs_ready_swaps_refusals_and_failed_polls_at_info(world, tmp_path):
    world.users("u1", "m1", seed=1)
    world.index("stories", "s1", "m1", seed=2)
    server = ServeProcess(world.root, tmp_path / "cache")
    try:
        ready = server.wait_for_line(r"INFO serving\.reloader: ready: serving state 1, model m1: ")
        assert "embeddings/users/u1 (100)" in ready and "indexes/stories/s1 (2,000)" in ready
        assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO ", ready)  # stamped with the time
        assert httpx.get(f"http://127.0.0.1:{server.port}/readyz", timeout=10).status_code == 200

        world.index("stories", "s2", "m1", seed=3)
        swapped = server.wait_for_line(r"swapped in state 2, model m1: ")
        assert "indexes/stories/s2 (2,000)" in swapped

        def flip(path: Path) -> None:
            data = bytearray(path.read_bytes())
            data[len(data) // 2] ^= 0xFF
            path.write_bytes(bytes(data))

        world.index("stories", "s3", "m1", seed=4, corrupt=flip)
        server.wait_for_line(r"ERROR serving\.reloader: refused indexes/stories/s3: .*the current state keeps serving")

        latest = Path(world.store.kind("indexes/stories").backend.local_path("indexes/stories/LATEST"))
        latest.write_bytes(b"\xff\xfe")
        server.wait_for_line(r"WARNING serving\.reloader: cannot read indexes/stories/LATEST")
        latest.write_bytes(b"s2\n")
        server.wait_for_line(r"INFO serving\.reloader: indexes/stories/LATEST is readable again")
    finally:
        server.stop()
