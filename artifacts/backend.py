"""The storage interface the artifact store is written against, and how to open one.

Two backends implement it: `LocalBackend` (a directory, `file:///abs/path`) and
`GcsBackend` (`gs://bucket/prefix`). Keys are `/`-separated paths relative to the root.

The one operation that needs more than plain object storage is the pointer swap: a
compare-and-swap on a small object (`LATEST`), keyed by a *generation* number that
changes on every write. GCS provides it natively (object generations and the
`ifGenerationMatch` precondition); the local backend emulates it with a lock file that
holds the generation and an atomic rename. Generation 0 means "the object does not exist".
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

if TYPE_CHECKING:
    from config import GcsConfig


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    updated: float  # seconds since the epoch


class Backend(abc.ABC):
    uri: str

    @abc.abstractmethod
    def read_bytes(self, key: str) -> bytes:
        """The object's content. Raises FileNotFoundError when it does not exist."""

    @abc.abstractmethod
    def open_read(self, key: str) -> AbstractContextManager[BinaryIO]:
        """A binary stream over the object, for hashing or parsing large files."""

    @abc.abstractmethod
    def write_bytes(self, key: str, data: bytes) -> None:
        """Writes an object whole: readers see the old content or the new, never a part."""

    @abc.abstractmethod
    def create_bytes(self, key: str, data: bytes) -> bool:
        """Writes an object only if it does not exist yet; False when it already did."""

    @abc.abstractmethod
    def upload_file(self, key: str, path: Path) -> None: ...

    @abc.abstractmethod
    def download_file(self, key: str, path: Path) -> None: ...

    @abc.abstractmethod
    def exists(self, key: str) -> bool: ...

    @abc.abstractmethod
    def list_objects(self, prefix: str) -> Iterator[ObjectInfo]:
        """Every object under `prefix/`, recursively, keys relative to the root."""

    @abc.abstractmethod
    def list_children(self, prefix: str) -> list[str]:
        """Names of the immediate sub-directories of `prefix/`, sorted."""

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Deletes one object; a missing object is not an error."""

    @abc.abstractmethod
    def read_pointer(self, key: str) -> tuple[str | None, int]:
        """(value, generation) of a pointer object; (None, 0) when it does not exist."""

    @abc.abstractmethod
    def swap_pointer(
        self,
        key: str,
        value: str,
        expected_generation: int,
        log: tuple[str, Callable[[int], str]] | None = None,
    ) -> int:
        """Writes `value` only if the pointer is still at `expected_generation`.

        Returns the new generation. Raises PointerConflictError when another writer got
        there first; the caller re-reads and decides again. `log` = (key of a log object,
        line for a generation): the line is appended so that the log's lines are in the
        order of the pointer's generations, however many writers race.
        """

    @abc.abstractmethod
    def append_line(self, key: str, line: str) -> None:
        """Appends one line to a log object without losing concurrent appends."""

    def delete_prefix(self, prefix: str) -> None:
        """Deletes every object under `prefix/`."""
        for obj in list(self.list_objects(prefix)):
            self.delete(obj.key)

    def last_modified(self, prefix: str) -> float | None:
        """When anything under `prefix/` last changed (None: nothing there)."""
        return max((o.updated for o in self.list_objects(prefix)), default=None)

    def local_path(self, key: str) -> Path | None:
        """The object's path on this machine, when the backend is a local directory."""
        return None

    def join(self, *parts: str) -> str:
        return "/".join(p.strip("/") for p in parts if p)


def open_backend(uri: str, gcs: GcsConfig | None = None, lock_timeout_s: float = 30.0) -> Backend:
    """The backend for an artifact root URI (`file:///abs/path` or `gs://bucket/prefix`)."""
    if uri.startswith("file://"):
        from artifacts.local import LocalBackend

        return LocalBackend(Path(uri[len("file://") :]), lock_timeout_s=lock_timeout_s)
    if uri.startswith("gs://"):
        from artifacts.gcs import GcsBackend

        return GcsBackend.from_uri(uri, gcs)
    raise ValueError(f"artifact root {uri!r} must start with file:/// or gs://")
