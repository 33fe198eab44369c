"""A read-modify-write counter on a pointer: the workload the CAS tests race."""

from artifacts.backend import Backend
from artifacts.errors import PointerConflictError


def increment(backend: Backend, key: str) -> int:
    """Adds one to the integer stored in pointer `key`, retrying whenever another writer
    won; returns how many times it lost (so a race test can show there was a race)."""
    lost = 0
    while True:
        value, generation = backend.read_pointer(key)
        try:
            backend.swap_pointer(key, str(int(value or 0) + 1), generation)
            return lost
        except PointerConflictError:
            lost += 1
