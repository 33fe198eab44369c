"""An index version held by a child process: loading it never stalls the serving process.

hnswlib's `load_index` is one C++ call that holds the GIL from start to end (about 0.75 s
per million 128-d vectors on an idle core, several seconds on a busy machine). Loaded in
the serving process, it stops the event loop for that long, and every request arriving
meanwhile waits: the p99 during a hot reload becomes the load time. `IndexProcess` loads
the version in a child process instead (forked from a multiprocessing forkserver) and
answers the same read interface as `LoadedIndex` over a pipe.

From the event loop, calls are pipelined (`search` / `vector` below): each request is
written to the pipe at once and its future resolved when the child's answer arrives (the
child answers in order), so while the child searches, the loop parses and answers other
requests: HTTP work and search overlap on two cores. The loading itself runs in a child
thread at a lower CPU priority (`load_nice`, and with `load_idle` Linux's SCHED_IDLE
class): a reload under load takes its CPU time from idle cycles, not from the requests
being served.

The child dies with its handle: when the last `ServedState` holding an `IndexProcess` is
freed, the pipe closes, the child reads EOF and exits; if the serving process dies, the
kernel closes the pipe and the child exits the same way.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import pickle
import struct
import sys
import threading
import weakref
from collections import deque
from collections.abc import Collection
from multiprocessing.connection import Connection
from multiprocessing.reduction import ForkingPickler
from pathlib import Path

import numpy as np

from artifacts import CorruptArtifactError

log = logging.getLogger(__name__)

# Seconds a child may take to load and self-check a version (1M x 128 loads in ~1-5 s).
START_TIMEOUT_S = 600.0
# Searches run on a freshly loaded index before it is swapped in: the first queries pay
# for lazily initialised structures (hnswlib's visited-list pool) and cold pages.
WARMUP_QUERIES = 64
# Pipelined requests written to an index process as one message, at most (~0.6 kB each).
# Small enough that the answers to the first message come back while the child searches
# the next: with one message per turn the two processes took turns, each idle while the
# other worked (200k stories, 16 connections driven by wrk, 5 repeats: 2,273-2,528 QPS at
# 32 with both processes about half busy, 3,584-3,853 at 8; benchmarks/results/
# serving_repeats_200k_batch32.md and serving_repeats_200k.md).
MAX_BATCH = 8


class SearcherDiedError(RuntimeError):
    """The child process holding an index exited; the reloader loads the version again."""


class SearcherLoadError(RuntimeError):
    """Loading failed for a reason that is not the version's bytes: the child crashed (e.g.
    SIGSEGV in hnswlib), ran out of memory, timed out or hit a bug. The reloader counts these
    per version, backs off, and refuses the version after `serving.max_load_crashes`."""


class IndexProcess:
    """A `LoadedIndex` in a child process, with the same read interface.

    Attributes (copied from the child's LoadedIndex): collection, version, model_version,
    dim, count, ef, memory_bytes; and pid, process_rss_bytes (the child's resident size
    after loading, interpreter and libraries included).
    """

    def __init__(self, directory: Path, collection: str, *, load_nice: int = 0, load_idle: bool = False):
        ours, theirs = _context().Pipe()
        self._process = _context().Process(
            target=_serve_child,
            args=(theirs, str(directory), collection, load_nice, load_idle),
            name=f"ebr-index-{collection}",
            daemon=True,
        )
        self._process.start()
        theirs.close()
        self._channel = _Channel(ours, f"the {collection} index process (pid {self._process.pid})")
        self._finalizer = weakref.finalize(self, _shut_down, self._channel, self._process)
        if not ours.poll(START_TIMEOUT_S):
            self.close()
            raise SearcherLoadError(f"{directory}: the index process did not finish loading in {START_TIMEOUT_S:.0f} s")
        try:
            status, payload = ours.recv()
        except (EOFError, OSError):
            self._process.join(5)
            code = self._process.exitcode
            self.close()
            how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
            raise SearcherLoadError(
                f"{directory}: the index process crashed while loading ({how}; see its stderr)"
            ) from None
        if status != "ready":
            self.close()
            if payload["permanent"]:  # the version itself is bad: the same bytes fail the same way
                raise CorruptArtifactError(payload["message"])
            raise SearcherLoadError(payload["message"])
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
        return _answer(self._channel.call(("search", _rows(queries), k, list(exclude))))

    def vector(self, item_id: str) -> np.ndarray | None:
        return _answer(self._channel.call(("vector", item_id)))

    def __contains__(self, item_id: str) -> bool:
        return _answer(self._channel.call(("contains", item_id)))

    async def search_async(
        self, queries: np.ndarray, k: int, exclude: Collection[str] = ()
    ) -> list[list[tuple[str, float]]]:
        """`search`, pipelined on the pipe from the running event loop."""
        return _answer(await self._channel.call_async(("search", _rows(queries), k, list(exclude))))

    async def vector_async(self, item_id: str) -> np.ndarray | None:
        return _answer(await self._channel.call_async(("vector", item_id)))

    def close(self) -> None:
        self._finalizer()


def _rows(queries: np.ndarray) -> np.ndarray:
    """Queries as [q, dim] float32: a single [dim] vector, as `LoadedIndex.search` accepts
    and every retrieval by user id passes, becomes [1, dim], so its search travels in the
    searches message (`_message`) like any other single query."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    return queries[None, :] if queries.ndim == 1 else queries


async def search(index, queries: np.ndarray, k: int, exclude: Collection[str] = ()) -> list[list[tuple[str, float]]]:
    """`index.search` from a request handler: an IndexProcess is awaited (other requests go
    on meanwhile); a LoadedIndex in this process answers inline (well under a millisecond,
    less than handing the query to a thread pool would cost)."""
    if isinstance(index, IndexProcess):
        return await index.search_async(queries, k, exclude)
    return index.search(queries, k, exclude)


async def vector(index, item_id: str) -> np.ndarray | None:
    """`index.vector` from a request handler (see `search`)."""
    if isinstance(index, IndexProcess):
        return await index.vector_async(item_id)
    return index.vector(item_id)


def _answer(reply: tuple[str, object]):
    status, payload = reply
    if status == "error":
        raise ValueError(payload)
    return payload


class _Channel:
    """The pipe to one child: blocking calls, or pipelined calls from one event loop.

    The child answers requests in the order it reads them, so pipelined callers queue a
    future per request written and the loop's reader callback resolves them in order. The
    requests of one turn of the event loop go as messages of at most MAX_BATCH (a "batch",
    answered with one message): under load each request would otherwise pay its own pipe
    write, wake-up of the child and wake-up of this process, and a turn's requests in one
    message would make this process wait for the child's whole batch. Once an event
    loop has used the channel, blocking calls are refused: their answers would be taken
    for the pipelined ones.
    """

    def __init__(self, connection: Connection, name: str):
        self.connection = connection
        self.name = name
        self.lock = threading.Lock()  # blocking calls from several threads: one at a time
        self.loop: asyncio.AbstractEventLoop | None = None
        self.queued: list[tuple[tuple, asyncio.Future]] = []  # this turn's requests, not written yet
        self.pending: deque[asyncio.Future] = deque()  # written, not answered yet, oldest first
        self.closed = False

    def call(self, request: tuple):
        with self.lock:
            if self.loop is not None:
                raise RuntimeError(f"{self.name} is pipelined from an event loop; await search_async there instead")
            try:
                self.connection.send(request)
                return self.connection.recv()
            except (EOFError, OSError) as err:
                raise SearcherDiedError(f"{self.name} is gone: {err}") from None

    async def call_async(self, request: tuple):
        loop = asyncio.get_running_loop()
        if self.closed:
            raise SearcherDiedError(f"{self.name} was closed")
        if self.loop is None:
            with self.lock:
                self.loop = loop
            loop.add_reader(self.connection.fileno(), self._read_answers)
        elif self.loop is not loop:
            raise RuntimeError(f"{self.name} is pipelined from another event loop")
        future = loop.create_future()
        if not self.queued:
            loop.call_soon(self._write_queued)
        self.queued.append((request, future))
        return await future

    def _write_queued(self) -> None:
        """Writes this turn's requests, MAX_BATCH a message (a few hundred bytes each: the
        pipe buffer takes a message at once)."""
        queued, self.queued = self.queued, []
        for start in range(0, len(queued), MAX_BATCH):
            part = queued[start : start + MAX_BATCH]
            futures = [future for _, future in part]
            try:
                if self.closed or self.connection.closed:
                    raise OSError("closed")
                message = _message([request for request, _ in part])
                if message[0] == "searches":
                    self.connection.send_bytes(_encode_searches(*message[1:]))
                else:
                    self.connection.send(message)
            except OSError as err:
                for future in futures:
                    if not future.done():
                        future.set_exception(SearcherDiedError(f"{self.name} is gone: {err}"))
                continue
            self.pending.extend(futures)

    def _read_answers(self) -> None:
        """The loop's reader callback: resolves the oldest futures with the answers that arrived."""
        try:
            while self.connection.poll():
                for one in _decode_answers(self.connection.recv_bytes()):
                    future = self.pending.popleft()
                    if not future.done():  # its request may have been cancelled (client gone)
                        future.set_result(one)
        except (EOFError, OSError) as err:
            self._detach(SearcherDiedError(f"{self.name} is gone: {err or 'end of pipe'}"))

    def _detach(self, failure: Exception) -> None:
        """In the loop's thread: stop reading, close the pipe, fail what waits."""
        if not self.connection.closed:
            if self.loop is not None and not self.loop.is_closed():
                self.loop.remove_reader(self.connection.fileno())
            self.connection.close()
        waiting = list(self.pending)
        waiting += [future for _, future in self.queued]
        self.pending.clear()
        self.queued = []
        for future in waiting:
            if not future.done():
                future.set_exception(failure)

    def close(self) -> None:
        """From any thread. The child exits when it reads the end of the pipe."""
        if self.closed:
            return
        self.closed = True
        loop = self.loop
        if loop is not None and loop.is_running():
            # The reader must be removed in the loop's own thread, before the fd is closed
            # (and its number reused by a new pipe).
            loop.call_soon_threadsafe(self._detach, SearcherDiedError(f"{self.name} was closed"))
        else:
            try:
                self.connection.close()
            except OSError:
                pass


def _message(requests: list[tuple]) -> tuple:
    """What `_Channel` writes for one message of requests: single-query searches of one
    dimension as ("searches", their queries stacked [n, dim], their k, their exclusions),
    sent as bytes (`_encode_searches`); a lone other request as itself; anything else as
    ("batch", requests)."""
    queries = [request[1] for request in requests if request[0] == "search"]
    if (
        len(queries) == len(requests)
        and len({q.shape for q in queries}) == 1
        and queries[0].ndim == 2
        and len(queries[0]) == 1
    ):
        return ("searches", np.concatenate(queries), [r[2] for r in requests], [r[3] for r in requests])
    if len(requests) == 1:
        return requests[0]
    return ("batch", requests)


# The searches message, the one nearly every request travels in, as bytes rather than a
# pickle: a magic (a pickle begins with 0x80, never with it), the query count, the
# dimension and the length of the pickled exclusions (0 when no search has any), then
# every k as int32, the queries as float32 and the exclusions. Pickling the stacked array
# (numpy's __reduce__, its dtype) and unpickling it in the child took ~5% of the serving
# process's CPU a request (py-spy, 200k stories under wrk's closed loop).
_SEARCHES_MAGIC = b"EBRQ"
_SEARCHES_HEAD = struct.Struct("<4sIII")


def _encode_searches(queries: np.ndarray, ks: list[int], excludes: list[list[str]]) -> bytes:
    n, dim = queries.shape
    tail = pickle.dumps(excludes, protocol=pickle.HIGHEST_PROTOCOL) if any(excludes) else b""
    return b"".join(
        (
            _SEARCHES_HEAD.pack(_SEARCHES_MAGIC, n, dim, len(tail)),
            np.asarray(ks, dtype="<i4").tobytes(),
            np.ascontiguousarray(queries, dtype="<f4").tobytes(),
            tail,
        )
    )


def _decode(message: bytes) -> tuple:
    """A message as the child reads it: the searches message from its bytes, any other
    from its pickle."""
    if message[:4] != _SEARCHES_MAGIC:
        return ForkingPickler.loads(message)
    _, n, dim, tail = _SEARCHES_HEAD.unpack_from(message)
    offset = _SEARCHES_HEAD.size
    ks = np.frombuffer(message, "<i4", n, offset).tolist()
    offset += 4 * n
    queries = np.frombuffer(message, "<f4", n * dim, offset).reshape(n, dim)
    offset += 4 * n * dim
    excludes = pickle.loads(message[offset : offset + tail]) if tail else [[] for _ in range(n)]
    return ("searches", queries, ks, excludes)


# The child's answer to a searches message without exclusions, as bytes rather than a
# pickled list of (id, score) pairs per search (`LoadedIndex.search_stacked`): a magic, the
# number of searches and the length of the ids, then each search's hit count as int32, every
# hit's score as float32 and every hit's id, in order, joined by NUL. Under wrk's closed loop
# at 200k stories hnswlib's search was 75% of the child's time with pickled requests and
# pairs and is 87% with both messages as bytes (py-spy); the server, which unpickled the
# pairs, now splits one string.
_HITS_MAGIC = b"EBRA"
_HITS_HEAD = struct.Struct("<4sII")
_ID_SEPARATOR = "\x00"


def _encode_hits(counts: list[int], ids: list[str], scores: np.ndarray) -> bytes:
    names = _ID_SEPARATOR.join(ids).encode()
    return b"".join(
        (
            _HITS_HEAD.pack(_HITS_MAGIC, len(counts), len(names)),
            np.asarray(counts, dtype="<i4").tobytes(),
            np.ascontiguousarray(scores, dtype="<f4").tobytes(),
            names,
        )
    )


def _decode_answers(message: bytes) -> list[tuple[str, object]]:
    """The answers in one message from the child, one per request it answered, in order:
    ("ok", result) or ("error", message)."""
    if message[:4] != _HITS_MAGIC:
        reply = ForkingPickler.loads(message)
        return reply[1] if reply[0] == "batch" else [reply]
    _, n, length = _HITS_HEAD.unpack_from(message)
    offset = _HITS_HEAD.size
    counts = np.frombuffer(message, "<i4", n, offset).tolist()
    offset += 4 * n
    total = sum(counts)
    scores = np.frombuffer(message, "<f4", total, offset).tolist()
    offset += 4 * total
    ids = message[offset : offset + length].decode().split(_ID_SEPARATOR) if total else []
    answers = []
    start = 0
    for count in counts:
        end = start + count
        answers.append(("ok", [list(zip(ids[start:end], scores[start:end], strict=True))]))
        start = end
    return answers


def _shut_down(channel: _Channel, process) -> None:
    """Closes the pipe (the child exits on EOF) and reaps the child without blocking."""
    channel.close()
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
            context.set_forkserver_preload(
                ["serving.searcher", "index_builder.loaded_index", "hnswlib", "pyarrow.parquet", "psutil"]
            )
            _CONTEXT = context
        return _CONTEXT


def open_index_process(directory: Path, collection: str, *, beside_served: bool, nice: int, idle: bool) -> IndexProcess:
    """An `IndexProcess` whose loading thread runs at the reload's priority (`nice`, and the
    SCHED_IDLE class with `idle`) when a served version answers meanwhile; with nothing
    served no request waits on another index, so it loads at normal priority."""
    return IndexProcess(directory, collection, load_nice=nice if beside_served else 0, load_idle=idle and beside_served)


def lower_thread_priority(nice: int, idle: bool = False) -> None:
    """Raises the calling thread's nice value by `nice` and, with `idle`, moves it to the
    SCHED_IDLE class (Linux: both are per thread, so the rest of the process keeps its
    priority); does nothing elsewhere or when refused.

    A niced thread still takes a share of a busy core (nice 10: about a tenth of it beside
    a thread at 0); a SCHED_IDLE thread runs when nothing else wants the core (about 0.3%
    of it while something does), so its work waits for idle cycles. Use `idle` only for a
    thread whose process has no other thread waiting for the GIL it may hold."""
    if (nice <= 0 and not idle) or not sys.platform.startswith("linux"):
        return
    try:
        tid = threading.get_native_id()
        if nice > 0:
            os.setpriority(os.PRIO_PROCESS, tid, min(os.getpriority(os.PRIO_PROCESS, tid) + nice, 19))
        if idle:
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))  # 0: the calling thread
    except OSError as err:
        log.warning("could not lower the priority of thread %s: %s", threading.current_thread().name, err)


def _load_in_low_priority_thread(directory: str, collection: str, nice: int, idle: bool = False):
    """`load_index` in a thread of its own at `nice` (and SCHED_IDLE with `idle`); the main
    thread, which serves the searches afterwards, keeps the normal priority."""
    from index_builder.loaded_index import load_index

    outcome: dict = {}

    def load() -> None:
        lower_thread_priority(nice, idle)
        try:
            # The parent downloaded the version with every sha256 checked; the loader
            # still checks sizes, dimension, count and stored vectors.
            outcome["index"] = load_index(Path(directory), collection, verify=False)
        except Exception as err:  # re-raised in the main thread
            outcome["error"] = err

    thread = threading.Thread(target=load, name="ebr-index-load")
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["index"]


def warmup_queries(dim: int, vectors: np.ndarray | None = None) -> np.ndarray:
    """[<= WARMUP_QUERIES, dim] float32 queries to warm a freshly loaded index: the first
    rows of `vectors` (e.g. the served users', real queries) when there are any, else
    WARMUP_QUERIES random unit vectors (seed 0, the same every time)."""
    if vectors is not None and len(vectors):
        return vectors[:WARMUP_QUERIES]
    queries = np.random.default_rng(0).standard_normal((WARMUP_QUERIES, dim)).astype(np.float32)
    return queries / np.linalg.norm(queries, axis=1, keepdims=True)


def warm_up(index, queries: np.ndarray) -> None:
    """Searches `index` (a LoadedIndex) for each query, one at a time, as requests arrive."""
    for query in queries:
        index.search(query, 10)


def start_forkserver() -> None:
    """Starts the forkserver now, from the calling thread, whose priority every index
    process inherits: call it from a normal-priority thread (the reloader lowers its own)."""
    from multiprocessing import forkserver

    _context()
    forkserver.ensure_running()


def _serve_child(
    connection: Connection, directory: str, collection: str, load_nice: int = 0, load_idle: bool = False
) -> int:
    """The child: load, self-check, warm up, report, then answer requests until EOF."""
    import psutil

    try:
        index = _load_in_low_priority_thread(directory, collection, load_nice, load_idle)
        warm_up(index, warmup_queries(index.dim))
        # The hits of a searches message go back as bytes, ids joined by NUL (`_encode_hits`),
        # unless an id holds one (any string can be an id); then they go as pickles. Checked
        # before "ready": once swapped in, the first answers must not wait for it.
        separable = _ID_SEPARATOR not in "".join(index.item_ids())
    except Exception as err:  # reported to the parent, which decides on a retry or a refusal
        # A check that failed on the version's bytes is permanent; a MemoryError or a bug is
        # not the version's fault and is retried (counted, with backoff) by the reloader.
        permanent = isinstance(err, (CorruptArtifactError, ValueError))
        connection.send(
            (
                "error",
                {"permanent": permanent, "message": f"{type(err).__name__}: {err}" if not permanent else str(err)},
            )
        )
        return 1
    connection.send(
        (
            "ready",
            {
                "collection": index.collection,
                "version": index.version,
                "model_version": index.model_version,
                "dim": index.dim,
                "count": index.count,
                "ef": index.ef,
                "memory_bytes": index.memory_bytes,
                "process_rss_bytes": psutil.Process().memory_info().rss,
            },
        )
    )
    handlers = {
        "search": lambda queries, k, exclude: index.search(queries, k, exclude),
        "vector": index.vector,
        "contains": lambda item_id: item_id in index,
    }

    def answer(request: tuple) -> tuple[str, object]:
        op, *args = request
        try:
            return ("ok", handlers[op](*args))
        except Exception as err:  # a bad request must not kill the index
            return ("error", f"{type(err).__name__}: {err}")

    def answer_batch(requests: list[tuple]) -> list[tuple[str, object]]:
        """The answers `answer` gives one by one; the searches among them go to hnswlib
        together (`LoadedIndex.search_many`). If any of those fails, each is answered on its
        own, so only the bad request gets an error."""
        searches = [i for i, request in enumerate(requests) if request[0] == "search"]
        if len(searches) < 2:
            return [answer(request) for request in requests]
        try:
            found = index.search_many([requests[i][1:] for i in searches])
        except Exception:
            return [answer(request) for request in requests]
        answers = dict(zip(searches, (("ok", one) for one in found), strict=True))
        return [answers[i] if i in answers else answer(request) for i, request in enumerate(requests)]

    while True:
        try:
            request = _decode(connection.recv_bytes())
        except (EOFError, OSError):
            # The parent closed the pipe: this version is no longer served. Exit at the
            # lowest priority: the kernel frees the index's memory (~0.7 GB per million
            # vectors) in this thread's time, which must not be taken from the new version.
            lower_thread_priority(19)
            return 0
        if request[0] == "batch":  # _Channel: up to MAX_BATCH requests, answered in one message
            connection.send(("batch", answer_batch(request[1])))
        elif request[0] == "searches":  # _Channel: the same for single-query searches (`_message`)
            _, queries, ks, excludes = request
            stacked = None
            if separable and not any(excludes):
                try:
                    stacked = index.search_stacked(queries, ks)
                except Exception:  # answered search by search below, so only a bad one fails
                    stacked = None
            if stacked is not None:
                connection.send_bytes(_encode_hits(*stacked))
                continue
            searches = [
                ("search", queries[i : i + 1], k, exclude)
                for i, (k, exclude) in enumerate(zip(ks, excludes, strict=True))
            ]
            connection.send(("batch", answer_batch(searches)))
        else:
            connection.send(answer(request))
