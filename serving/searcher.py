"""An index version held by a child process: loading it never stalls the serving process.

hnswlib's `load_index` is one C++ call that holds the GIL from start to end (about 0.75 s
per million 128-d vectors on an idle core, several seconds on a busy machine). Loaded in
the serving process, it stops the event loop for that long, and every request arriving
meanwhile waits: the p99 during a hot reload becomes the load time. `IndexProcess` loads
the version in a child process instead (forked from a multiprocessing forkserver) and
answers the same read interface as `LoadedIndex` over a pipe, one request at a time. The
serving process only waits on the pipe (GIL released) for the ~0.1 ms of a search.

The child dies with its handle: when the last `ServedState` holding an `IndexProcess` is
freed, the pipe closes, the child reads EOF and exits; if the serving process dies, the
kernel closes the pipe and the child exits the same way.
"""

from __future__ import annotations

import logging
import multiprocessing
import threading
import weakref
from collections.abc import Collection
from multiprocessing.connection import Connection
from pathlib import Path

import numpy as np

from artifacts import CorruptArtifactError

log = logging.getLogger(__name__)

# Seconds a child may take to load and self-check a version (1M x 128 loads in ~1-5 s).
START_TIMEOUT_S = 600.0
WARMUP_QUERIES = 64


class SearcherDiedError(RuntimeError):
    """The child process holding an index exited; the reloader loads the version again."""


class IndexProcess:
    """A `LoadedIndex` in a child process, with the same read interface.

    Attributes (copied from the child's LoadedIndex): collection, version, model_version,
    dim, count, ef, memory_bytes; and pid, process_rss_bytes (the child's resident size
    after loading, interpreter and libraries included).
    """

    def __init__(self, directory: Path, collection: str):
        ours, theirs = _context().Pipe()
        self._process = _context().Process(
            target=_serve_child, args=(theirs, str(directory), collection), name=f"ebr-index-{collection}", daemon=True
        )
        self._process.start()
        theirs.close()
        self._connection = ours
        self._lock = threading.Lock()  # one request at a time on the pipe
        self._finalizer = weakref.finalize(self, _shut_down, self._connection, self._process)
        if not self._connection.poll(START_TIMEOUT_S):
            self.close()
            raise CorruptArtifactError(f"{directory}: the index process did not finish loading in {START_TIMEOUT_S:.0f} s")
        try:
            status, payload = self._connection.recv()
        except (EOFError, OSError):
            self.close()
            raise SearcherDiedError(f"{directory}: the index process exited while loading (see its stderr)") from None
        if status != "ready":
            self.close()
            raise CorruptArtifactError(payload)
        self.pid = self._process.pid
        self.collection = payload["collection"]
        self.version = payload["version"]
        self.model_version = payload["model_version"]
        self.dim = int(payload["dim"])
        self.count = int(payload["count"])
        self.ef = int(payload["ef"])
        self.memory_bytes = int(payload["memory_bytes"])
        self.process_rss_bytes = int(payload["process_rss_bytes"])

    def __repr__(self) -> str:
        return f"IndexProcess({self.collection}/{self.version}, pid {self.pid}, {self.count} items)"

    @property
    def alive(self) -> bool:
        return self._process.is_alive()

    def search(self, queries: np.ndarray, k: int, exclude: Collection[str] = ()) -> list[list[tuple[str, float]]]:
        """As `LoadedIndex.search`: per query, up to k (id, inner product) pairs, best first."""
        return self._call("search", np.ascontiguousarray(queries, dtype=np.float32), k, list(exclude))

    def vector(self, item_id: str) -> np.ndarray | None:
        return self._call("vector", item_id)

    def __contains__(self, item_id: str) -> bool:
        return self._call("contains", item_id)

    def _call(self, *request):
        with self._lock:
            try:
                self._connection.send(request)
                status, payload = self._connection.recv()
            except (EOFError, OSError) as err:
                raise SearcherDiedError(f"the {self.collection} index process (pid {self.pid}) is gone: {err}") from None
        if status == "error":
            raise ValueError(payload)
        return payload

    def close(self) -> None:
        self._finalizer()


def _shut_down(connection: Connection, process) -> None:
    """Closes the pipe (the child exits on EOF) and reaps the child without blocking."""
    try:
        connection.close()
    except OSError:
        pass
    threading.Thread(target=_reap, args=(process,), daemon=True).start()


def _reap(process) -> None:
    process.join(30)
    if process.is_alive():
        process.kill()
        process.join()


_CONTEXT = None
_CONTEXT_LOCK = threading.Lock()


def _context():
    """A forkserver: children fork from a small single-threaded process that has imported
    this module once, so they start in milliseconds, and never inherit the serving
    process's threads and locks (forking that process directly would)."""
    global _CONTEXT
    with _CONTEXT_LOCK:
        if _CONTEXT is None:
            context = multiprocessing.get_context("forkserver")
            # Everything the child imports, so a fork starts with it loaded.
            context.set_forkserver_preload(["serving.searcher", "index_builder.loaded_index", "hnswlib", "pyarrow.parquet", "psutil"])
            _CONTEXT = context
        return _CONTEXT


def _serve_child(connection: Connection, directory: str, collection: str) -> int:
    """The child: load, self-check, warm up, report, then answer requests until EOF."""
    import psutil

    from index_builder.loaded_index import load_index

    try:
        # The parent downloaded the version with every sha256 checked; the loader still
        # checks sizes, dimension, count and stored vectors.
        index = load_index(Path(directory), collection, verify=False)
        queries = np.random.default_rng(0).standard_normal((WARMUP_QUERIES, index.dim)).astype(np.float32)
        for query in queries / np.linalg.norm(queries, axis=1, keepdims=True):
            index.search(query, 10)
    except Exception as err:  # reported to the parent, which refuses the version
        connection.send(("error", str(err)))
        return 1
    connection.send(("ready", {
        "collection": index.collection, "version": index.version, "model_version": index.model_version,
        "dim": index.dim, "count": index.count, "ef": index.ef,
        "memory_bytes": index.memory_bytes, "process_rss_bytes": psutil.Process().memory_info().rss,
    }))  # fmt: skip
    handlers = {
        "search": lambda queries, k, exclude: index.search(queries, k, exclude),
        "vector": index.vector,
        "contains": lambda item_id: item_id in index,
    }
    while True:
        try:
            op, *args = connection.recv()
        except (EOFError, OSError):
            return 0  # the parent closed the pipe: this version is no longer served
        try:
            reply = ("ok", handlers[op](*args))
        except Exception as err:  # a bad request must not kill the index
            reply = ("error", f"{type(err).__name__}: {err}")
        connection.send(reply)

