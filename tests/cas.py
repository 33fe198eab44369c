"""A read-modify-write counter on a pointer: the workload the CAS tests race."""

from artifacts.backend import Backend
from artifacts.errors import PointerConflictError


def increment(backend: Backend, key: str) -> None:
    """Adds one to the integer stored in pointer `key`, retrying whenever another writer won."""
    while True:
        value, generation = backend.read_pointer(key)
        try:
            backend.swap_pointer(key, str(int(value or 0) + 1), generation)
            return
        except PointerConflictError:
            continue
