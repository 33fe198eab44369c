"""The local-directory backend (`file:///abs/path`).

Whole-object writes go to a temporary file in the same directory, are fsync'ed and then
renamed over the target, so a reader never sees half a file and a crash leaves either the
old object or the new one.

Pointer compare-and-swap: each pointer `P` has a lock file `.P.lock` beside it and a
generation file `.P.gen`. A swap takes an exclusive `flock` on the lock file, checks the
generation, writes generation + 1 into `.P.gen` (temporary file, fsync, rename: a crash
leaves the old number or the new one, never an empty file), then renames the new pointer
into place. The generation is bumped *before* the pointer, so a crash in between only
makes concurrent writers retry; it can never let a stale writer through, and the
generation never goes down. (Before `.P.gen` existed the number was kept in the lock file
itself; it is still read, and the larger of the two wins.) `flock` locks are released by
the kernel when a process dies, so a killed publisher cannot leave the lock held.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from artifacts.backend import Backend, ObjectInfo
from artifacts.errors import ArtifactRootError, CorruptArtifactError, LockTimeoutError, PointerConflictError


class LocalBackend(Backend):
    def __init__(self, root: Path, lock_timeout_s: float = 30.0):
        if not root.is_absolute():
            raise ValueError(f"local artifact root {root} must be an absolute path")
        _check_root(root)
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
        self._remove_empty_dirs(path.parent)  # folders left empty, up to (not including) the root

    def delete_prefix(self, prefix: str) -> None:
        """Everything under `prefix/`, unfinished temporary files and empty folders too."""
        base = self._path(prefix)
        if not base.is_dir() or base == self.root:
            return
        for dirpath, dirnames, filenames in os.walk(base, topdown=False):
            for name in filenames:
                (Path(dirpath) / name).unlink(missing_ok=True)
            for name in dirnames:
                try:
                    (Path(dirpath) / name).rmdir()
                except OSError:
                    pass  # something was written meanwhile; it stays
        self._remove_empty_dirs(base)

    def _remove_empty_dirs(self, path: Path) -> None:
        """Removes `path` and its parents while they are empty, up to (not including) the root."""
        for folder in (path, *path.parents):
            if folder == self.root or self.root not in folder.parents:
                break
            try:
                folder.rmdir()
            except OSError:
                break

    def last_modified(self, prefix: str) -> float | None:
        """The newest file under `prefix/`, temporary files included (a write in
        progress); for a folder holding only empty folders, the newest folder."""
        base = self._path(prefix)
        if not base.is_dir():
            return None
        files, folders = [], [base]
        for dirpath, dirnames, filenames in os.walk(base):
            files += [Path(dirpath) / name for name in filenames]
            folders += [Path(dirpath) / name for name in dirnames]
        newest = None
        for path in files or folders:
            try:
                mtime = path.stat().st_mtime
            except FileNotFoundError:  # deleted while we walked
                continue
            newest = mtime if newest is None else max(newest, mtime)
        return newest if newest is not None else time.time()

    def read_pointer(self, key: str) -> tuple[str | None, int]:
        # A read creates nothing (no lock file, no folder): `ebr index list` on an empty
        # root must leave it empty. Without a lock file no swap ever ran here (a swap
        # creates it first, and writes the generation before the pointer), so there is
        # nothing to wait for: the pointer and generation are read as they are.
        if not os.path.lexists(self._lock_path(key)):
            return self._pointer_value(key, None)
        with self._locked(key, exclusive=False, create=False) as lock:
            return self._pointer_value(key, lock)

    def _pointer_value(self, key: str, lock: BinaryIO | None) -> tuple[str | None, int]:
        generation = self._generation(key, lock)
        path = self._path(key)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None, 0
        except IsADirectoryError:
            raise CorruptArtifactError(
                f"{self.uri}/{key} is a folder, not a pointer file; move it away, then publish "
                "or roll back to write a valid pointer"
            ) from None
        return _pointer_text(data, f"{self.uri}/{key}"), max(generation, 1)

    def swap_pointer(
        self,
        key: str,
        value: str,
        expected_generation: int,
        log: tuple[str, Callable[[int], str]] | None = None,
    ) -> int:
        with self._locked(key, exclusive=True) as lock:
            if self._path(key).is_dir():
                raise CorruptArtifactError(f"{self.uri}/{key} is a folder, not a pointer file; move it away first")
            current = self._generation(key, lock)
            if current == 0 and self._path(key).exists():
                current = 1  # a pointer written before generations were kept
            if current != expected_generation:
                raise PointerConflictError(
                    f"{self.uri}/{key} moved (generation {current}, expected {expected_generation})"
                )
            new_generation = current + 1
            self.write_bytes(_generation_key(key), f"{new_generation}\n".encode())
            self.write_bytes(key, f"{value}\n".encode())
            if log is not None:  # inside the pointer's lock: the log's order is the pointer's
                log_key, make_line = log
                self.append_line(log_key, make_line(new_generation))
            return new_generation

    def _generation(self, key: str, lock: BinaryIO | None) -> int:
        """The pointer's generation: the larger of `.P.gen` and what an older version of
        this code kept in the lock file (so an upgrade never lowers it)."""
        gen_key = _generation_key(key)
        try:
            recorded = _parse_generation(self._path(gen_key).read_bytes(), f"{self.uri}/{gen_key}")
        except FileNotFoundError:
            recorded = None
        if lock is None:
            return recorded or 0
        lock.seek(0)
        legacy_text = lock.read()
        try:
            legacy = _parse_generation(legacy_text, f"{self.uri}/{key} lock file")
        except CorruptArtifactError:
            if recorded is None:  # nothing else says how far the generation had come
                raise
            legacy = 0  # this code never writes the lock file; the .gen file is the truth
        return max(recorded or 0, legacy)

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

    def _lock_path(self, key: str) -> Path:
        path = self._path(key)
        return path.with_name(f".{path.name}.lock")

    @contextmanager
    def _locked(self, key: str, exclusive: bool, create: bool = True) -> Iterator[BinaryIO]:
        """`flock` on the key's lock file; `create=False` opens an existing one read-only."""
        lock_path = self._lock_path(key)
        if create:
            lock_path.parent.mkdir(parents=True, exist_ok=True)
        with open(lock_path, "a+b" if create else "rb") as lock:
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


def _generation_key(key: str) -> str:
    head, _, name = key.rpartition("/")
    return f"{head}/.{name}.gen" if head else f".{name}.gen"


def _parse_generation(data: bytes, where: str) -> int:
    text = data.strip()
    if not text:
        return 0
    if not text.isdigit():
        raise CorruptArtifactError(
            f"{where} holds {data[:40]!r}, not a generation number; if no publisher is running, "
            "write the last generation of HISTORY.jsonl into it (or delete it to restart counting)"
        )
    return int(text)


def _pointer_text(data: bytes, where: str) -> str:
    try:
        return data.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise CorruptArtifactError(
            f"{where} is not a UTF-8 version name ({data[:20]!r}...); delete it or write a "
            "complete version's name into it"
        ) from None


def _check_root(root: Path) -> None:
    """Refuses a root that exists but is not a usable directory (a file, a symlink loop)."""
    try:
        if root.is_dir():
            return
        if os.path.lexists(root):
            kind = "a symlink loop or a broken link" if root.is_symlink() else "a file"
            raise ArtifactRootError(f"artifact root {root} is {kind}, not a directory; point --root at a folder")
        for parent in root.parents:  # the root will be created: every existing ancestor must be a folder
            if os.path.lexists(parent):
                if not parent.is_dir():
                    raise ArtifactRootError(f"artifact root {root}: {parent} is not a directory")
                break
    except OSError as err:
        raise ArtifactRootError(f"artifact root {root} cannot be used: {err.strerror or err}") from None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
