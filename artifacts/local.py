"""The local-directory backend (`file:///abs/path`).

Whole-object writes go to a temporary file in the same directory, are fsync'ed and then
renamed over the target, so a reader never sees half a file and a crash leaves either the
old object or the new one.

Pointer compare-and-swap: each pointer `P` has a lock file `.P.lock` beside it that holds
the pointer's generation. A swap takes an exclusive `flock` on it, checks the generation,
writes generation + 1 into the lock file, then renames the new pointer into place. The
generation is bumped *before* the rename, so a crash in between only makes concurrent
writers retry; it can never let a stale writer through. `flock` locks are released by
the kernel when a process dies, so a killed publisher cannot leave the lock held.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from artifacts.backend import Backend, ObjectInfo
from artifacts.errors import LockTimeoutError, PointerConflictError


class LocalBackend(Backend):
    def __init__(self, root: Path, lock_timeout_s: float = 30.0):
        if not root.is_absolute():
            raise ValueError(f"local artifact root {root} must be an absolute path")
        self.root = root
        self.uri = f"file://{root}"
        self.lock_timeout_s = lock_timeout_s

    def _path(self, key: str) -> Path:
        return self.root / key if key else self.root

    def local_path(self, key: str) -> Path:
        return self._path(key)

    def read_bytes(self, key: str) -> bytes:
        return self._path(key).read_bytes()

    @contextmanager
    def open_read(self, key: str) -> Iterator[BinaryIO]:
        with self._path(key).open("rb") as f:
            yield f

    def write_bytes(self, key: str, data: bytes) -> None:
        with self._atomic_target(key) as tmp:
            with tmp.open("wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())

    def create_bytes(self, key: str, data: bytes) -> bool:
        # link() refuses an existing target, atomically: the first writer wins.
        with self._atomic_target(key, replace=False) as tmp:
            with tmp.open("wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, self._path(key))
            except FileExistsError:
                return False
        return True

    def upload_file(self, key: str, path: Path) -> None:
        with self._atomic_target(key) as tmp:
            shutil.copyfile(path, tmp)
            with tmp.open("rb+") as f:
                os.fsync(f.fileno())

    def download_file(self, key: str, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self._path(key), path)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list_objects(self, prefix: str) -> Iterator[ObjectInfo]:
        base = self._path(prefix)
        if not base.is_dir():
            return
        for dirpath, _, filenames in os.walk(base):
            for name in sorted(filenames):
                if name.startswith(".") or ".tmp-" in name:  # lock files, unfinished writes
                    continue
                path = Path(dirpath) / name
                try:
                    stat = path.stat()
                except FileNotFoundError:  # deleted while we walked
                    continue
                yield ObjectInfo(str(path.relative_to(self.root)), stat.st_size, stat.st_mtime)

    def list_children(self, prefix: str) -> list[str]:
        base = self._path(prefix)
        if not base.is_dir():
            return []
        return sorted(p.name for p in base.iterdir() if p.is_dir())

    def delete(self, key: str) -> None:
        path = self._path(key)
        path.unlink(missing_ok=True)
        # Remove directories left empty, up to (not including) the root.
        for parent in path.parents:
            if parent == self.root or self.root not in parent.parents:
                break
            try:
                parent.rmdir()
            except OSError:
                break

    def read_pointer(self, key: str) -> tuple[str | None, int]:
        with self._locked(key, exclusive=False) as lock:
            generation = _read_generation(lock)
            try:
                value = self._path(key).read_text().strip()
            except FileNotFoundError:
                return None, 0
            return value, max(generation, 1)

    def swap_pointer(self, key: str, value: str, expected_generation: int) -> int:
        with self._locked(key, exclusive=True) as lock:
            current = _read_generation(lock)
            if current == 0 and self._path(key).exists():
                current = 1  # a pointer written before generations were kept
            if current != expected_generation:
                raise PointerConflictError(
                    f"{self.uri}/{key} moved (generation {current}, expected {expected_generation})"
                )
            new_generation = current + 1
            lock.seek(0)
            lock.truncate()
            lock.write(f"{new_generation}\n".encode())
            lock.flush()
            os.fsync(lock.fileno())
            self.write_bytes(key, f"{value}\n".encode())
            return new_generation

    def append_line(self, key: str, line: str) -> None:
        if "\n" in line:
            raise ValueError("a log line must not contain a newline")
        with self._locked(key, exclusive=True):
            path = self._path(key)
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("ab") as f:
                f.write(f"{line}\n".encode())
                f.flush()
                os.fsync(f.fileno())

    @contextmanager
    def _atomic_target(self, key: str, replace: bool = True) -> Iterator[Path]:
        """A temporary path beside `key`, renamed over it on success (if `replace`)."""
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.tmp-{uuid.uuid4().hex}")
        try:
            yield tmp
            if replace:
                os.replace(tmp, path)
            _fsync_dir(path.parent)
        finally:
            tmp.unlink(missing_ok=True)

    @contextmanager
    def _locked(self, key: str, exclusive: bool) -> Iterator[BinaryIO]:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        lock_path = path.with_name(f".{path.name}.lock")
        with open(lock_path, "a+b") as lock:
            mode = (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB
            deadline = time.monotonic() + self.lock_timeout_s
            while True:
                try:
                    fcntl.flock(lock.fileno(), mode)
                    break
                except OSError as err:
                    if err.errno not in (errno.EAGAIN, errno.EACCES):
                        raise
                    if time.monotonic() > deadline:
                        raise LockTimeoutError(
                            f"could not lock {lock_path} within {self.lock_timeout_s:.0f}s; "
                            "another publisher holds it (or raise store.lock_timeout_s)"
                        ) from None
                    time.sleep(0.005)
            try:
                yield lock
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


def _read_generation(lock: BinaryIO) -> int:
    lock.seek(0)
    text = lock.read().decode().strip()
    return int(text) if text else 0


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
