"""Waiting, in tests, for what a server, a thread or another process does meanwhile."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def wait_for(
    condition: Callable[[], Any],
    what: str = "condition",
    timeout: float = 10.0,
    *,
    interval: float = 0.02,
    details: Callable[[], str] | None = None,
) -> Any:
    """Polls `condition` every `interval` s until it returns something truthy; returns that.

    After `timeout` s, fails with an AssertionError naming `what`, followed by `details()`
    (e.g. the logs of the processes waited on).
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s: {what}" + (f"\n{details()}" if details else ""))
