"""The poll loop of the service's reloader and of a shard server's holder: one owner.

`Poller.begin(...)` starts a daemon thread that calls `poll()` every `interval_s` (from
the start of one call to the start of the next) until `stop()`. A poll that raises is
logged with its traceback and the loop goes on: the poller must outlive any bug in one
poll. With index processes (serving.searcher=process), the forkserver is started first,
from the calling thread, whose priority every index process inherits; then the poll
thread lowers its own priority by serving.reload_nice (inline, a slower load would hold
the GIL longer, so it keeps its priority).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from serving.searcher import lower_thread_priority, start_forkserver


class Poller(threading.Thread):
    """A daemon thread calling `poll` every `interval_s` until `stop()`."""

    def __init__(
        self,
        poll: Callable[[], object],
        interval_s: float,
        *,
        name: str,
        logger: logging.Logger,
        crash_message: str,
        nice: int = 0,
        on_crash: Callable[[], None] | None = None,
    ):
        super().__init__(name=name, daemon=True)
        self.poll, self.interval_s, self.nice = poll, interval_s, nice
        self.logger, self.crash_message, self.on_crash = logger, crash_message, on_crash
        self._halt = threading.Event()

    @classmethod
    def begin(
        cls, poll: Callable[[], object], interval_s: float, *, searcher: str, reload_nice: int, **kwargs
    ) -> Poller:
        """Started: the forkserver first with index processes, and the thread then niced."""
        if searcher == "process":
            start_forkserver()  # from this thread, before the poller lowers its priority
        poller = cls(poll, interval_s, nice=reload_nice if searcher == "process" else 0, **kwargs)
        poller.start()
        return poller

    def run(self) -> None:
        lower_thread_priority(self.nice)
        while not self._halt.is_set():
            started = time.monotonic()
            try:
                self.poll()
            except Exception:  # the poller must outlive any bug in one poll
                self.logger.exception(self.crash_message)
                if self.on_crash is not None:
                    self.on_crash()
            self._halt.wait(max(0.0, self.interval_s - (time.monotonic() - started)))

    def stop(self, timeout: float = 30.0) -> None:
        self._halt.set()
        self.join(timeout)
