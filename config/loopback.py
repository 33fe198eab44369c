"""Free TCP ports on this machine's loopback interface, for the processes we start there.

The multi-worker training launcher (`models.distributed`), the demo's retrieval service
(`orchestration.demo`), the benchmarks and the tests all start servers on 127.0.0.1 and
need ports nobody listens on. It is loopback networking, no concern of any of those
packages, so it lives here, below all of them (it reads no configuration).

A port is free when asked: the caller binds it soon after, and another process may take
it in between (a server that fails to bind says so).
"""

from __future__ import annotations

import socket

LOOPBACK = "127.0.0.1"


def free_ports(n: int, host: str = LOOPBACK) -> list[int]:
    """n ports free on `host` now (held open together so that they differ)."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind((host, 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def free_port(host: str = LOOPBACK) -> int:
    """One port free on `host` now."""
    return free_ports(1, host)[0]
