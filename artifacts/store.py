"""The artifact store: versioned, immutable directories and a LATEST pointer per kind.

Layout (the contract between the pipeline's stages, see DESIGN.md):

    ROOT/<kind>/<version>/...            the version's files
    ROOT/<kind>/<version>/MANIFEST.json  written last: a version without it is incomplete
    ROOT/<kind>/LATEST                   the published version's name
    ROOT/<kind>/HISTORY.jsonl            every pointer move: when, from, to, why, by whom

Publishing is: write the files, write the manifest (create-if-absent, so a complete
version can never be overwritten), then move LATEST by compare-and-swap. A publisher that
crashes at any point leaves LATEST on the complete version it named before.

Typical use:

    store = ArtifactStore.from_config(cfg)
    snapshots = store.kind("embeddings/users")
    with snapshots.new_version(name, parents={"model_version": mv}) as version:
        version.add_file("part-00000.parquet", path)
        version.metrics["count"] = n
    snapshots.publish(name, reason="scheduled user dataflow", run_id=run_id)
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import random
import socket
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from config import StoreConfig

from artifacts.backend import Backend, open_backend
from artifacts.errors import (
    CorruptArtifactError,
    IncompleteVersionError,
    PointerConflictError,
    UnknownVersionError,
    VersionExistsError,
)
from artifacts.manifest import (
    FileEntry,
    Manifest,
    check_entry,
    now_iso,
    sha256_bytes,
    sha256_stream,
)
from artifacts.names import (
    HISTORY,
    LATEST,
    MANIFEST,
    validate_file_name,
    validate_kind,
    validate_version,
)

if TYPE_CHECKING:
    from config import EbrConfig

log = logging.getLogger(__name__)

# Top-level folders that hold versioned kinds (two levels: "<group>/<name>").
VERSIONED_GROUPS = ("models", "embeddings", "indexes")


def actor() -> str:
    """Who is acting, for the history log: user@host and process id."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True)
class VersionInfo:
    name: str
    complete: bool
    manifest: Manifest | None = None


@dataclass(frozen=True)
class PointerMove:
    """One line of HISTORY.jsonl."""

    at: str
    kind: str
    action: str  # "publish" or "rollback"
    from_version: str | None
    to_version: str
    reason: str
    by: str
    run_id: str | None = None
    generation: int | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, line: str) -> PointerMove:
        return cls(**json.loads(line))


@dataclass(frozen=True)
class PublishResult:
    moved: bool
    latest: str | None
    detail: str
    move: PointerMove | None = None


@dataclass(frozen=True)
class RetentionReport:
    kept: list[str]
    deleted: list[str]
    dry_run: bool


class ArtifactStore:
    def __init__(self, backend: Backend, store_config: StoreConfig | None = None):
        self.backend = backend
        self.config = store_config or StoreConfig()

    @classmethod
    def from_config(cls, cfg: EbrConfig) -> ArtifactStore:
        backend = open_backend(cfg.root, cfg.gcs, lock_timeout_s=cfg.store.lock_timeout_s)
        return cls(backend, cfg.store)

    @classmethod
    def open(cls, uri: str) -> ArtifactStore:
        """A store with default settings, for scripts and tests (`from_config` elsewhere)."""
        return cls(open_backend(uri))

    @property
    def uri(self) -> str:
        return self.backend.uri

    def kind(self, name: str) -> ArtifactKind:
        return ArtifactKind(self, validate_kind(name))

    def kinds(self) -> list[str]:
        """Every kind that has at least one version directory, e.g. 'indexes/stories'."""
        return [
            f"{group}/{name}"
            for group in VERSIONED_GROUPS
            for name in self.backend.list_children(group)
        ]


class ArtifactKind:
    """The versions of one kind of artifact (`models/two_tower`, `indexes/stories`, ...)."""

    def __init__(self, store: ArtifactStore, name: str):
        self.store = store
        self.backend = store.backend
        self.name = name

    def __repr__(self) -> str:
        return f"ArtifactKind({self.backend.uri}/{self.name})"

    def _key(self, *parts: str) -> str:
        return self.backend.join(self.name, *parts)

    # -- reading ------------------------------------------------------------------------

    def latest(self) -> str | None:
        return self.backend.read_pointer(self._key(LATEST))[0]

    def is_complete(self, version: str) -> bool:
        return self.backend.exists(self._key(validate_version(version), MANIFEST))

    def versions(self) -> list[VersionInfo]:
        """Every version directory, oldest first, with its manifest when complete."""
        infos = []
        for name in self.backend.list_children(self.name):
            try:
                validate_version(name)
            except ValueError:
                continue  # not ours (e.g. a stray folder)
            try:
                infos.append(VersionInfo(name, True, self.manifest(name)))
            except IncompleteVersionError:
                infos.append(VersionInfo(name, False))
        return infos

    def complete_versions(self) -> list[str]:
        return [v.name for v in self.versions() if v.complete]

    def manifest(self, version: str) -> Manifest:
        validate_version(version)
        key = self._key(version, MANIFEST)
        try:
            data = self.backend.read_bytes(key)
        except FileNotFoundError:
            if any(True for _ in self.backend.list_objects(self._key(version))):
                raise IncompleteVersionError(
                    f"{self.name}/{version} has no {MANIFEST}: it is still being written or "
                    "its writer died; it is never read (retention removes it later)"
                ) from None
            known = ", ".join(self.complete_versions()[-5:]) or "none"
            raise UnknownVersionError(
                f"{self.name} has no version {version!r} (newest complete: {known})"
            ) from None
        manifest = Manifest.from_json(data, f"{self.backend.uri}/{key}")
        if manifest.kind != self.name or manifest.version != version:
            raise CorruptArtifactError(
                f"{key} describes {manifest.kind}/{manifest.version}, not {self.name}/{version}"
            )
        return manifest

    def verify(self, version: str) -> Manifest:
        """Reads every file of a version and checks size and sha256 against the manifest."""
        manifest = self.manifest(version)
        for name, entry in manifest.files.items():
            key = self._key(version, name)
            try:
                with self.backend.open_read(key) as stream:
                    size, digest = sha256_stream(stream)
            except FileNotFoundError:
                raise CorruptArtifactError(
                    f"{self.backend.uri}/{key} is listed in the manifest but missing"
                ) from None
            check_entry(f"{self.backend.uri}/{key}", entry, size, digest)
        return manifest

    def read_file(self, version: str, name: str) -> bytes:
        """One file of a complete version, checked against its manifest entry."""
        manifest = self.manifest(version)
        entry = _manifest_entry(manifest, validate_file_name(name))
        data = self.backend.read_bytes(self._key(version, name))
        check_entry(f"{self.name}/{version}/{name}", entry, len(data), sha256_bytes(data))
        return data

    def download(self, version: str, dest: Path) -> Path:
        """Copies a complete version into `dest/<version>/`, verifying every file.

        Files already present with the right size and checksum are kept, so a local
        cache can call this repeatedly. The manifest is copied last.
        """
        manifest = self.manifest(version)
        target = dest / version
        for name, entry in manifest.files.items():
            path = target / name
            if path.is_file() and path.stat().st_size == entry.size:
                with path.open("rb") as f:
                    if sha256_stream(f)[1] == entry.sha256:
                        continue
            tmp = path.with_name(f"{path.name}.part")
            self.backend.download_file(self._key(version, name), tmp)
            with tmp.open("rb") as f:
                size, digest = sha256_stream(f)
            try:
                check_entry(f"{self.backend.uri}/{self._key(version, name)}", entry, size, digest)
            except CorruptArtifactError:
                tmp.unlink(missing_ok=True)
                raise
            os.replace(tmp, path)
        (target / MANIFEST).write_bytes(manifest.to_json())
        return target

    def history(self) -> list[PointerMove]:
        try:
            data = self.backend.read_bytes(self._key(HISTORY))
        except FileNotFoundError:
            return []
        return [PointerMove.from_json(line) for line in data.decode().splitlines() if line]

    # -- writing ------------------------------------------------------------------------

    def new_version(
        self,
        version: str,
        *,
        parents: dict[str, str] | None = None,
        params: dict[str, Any] | None = None,
        created_by: str | None = None,
    ) -> VersionWriter:
        """A writer for a new version; its manifest is written when the `with` block ends.

        Raises VersionExistsError if the version is complete already (check
        `is_complete()` first to make a rerun reuse it). Leftovers of an incomplete
        attempt with the same name are removed first.
        """
        validate_version(version)
        if self.is_complete(version):
            raise VersionExistsError(
                f"{self.name}/{version} is complete already and versions are immutable; "
                "reuse it or choose a new version name"
            )
        self._delete_objects(version)
        return VersionWriter(self, version, parents or {}, params or {}, created_by or actor())

    def publish(self, version: str, *, reason: str, run_id: str | None = None) -> PublishResult:
        """Moves LATEST to `version` by compare-and-swap.

        Idempotent: publishing the version LATEST already names changes nothing. A
        version older (by name, which sorts by time) than the one LATEST names is not
        published either: a slow or backfilled run never moves LATEST backwards; that is
        what `rollback_to` is for.
        """
        self.manifest(version)  # must exist and be complete

        def decide(current: str | None) -> str | None:
            if current == version:
                return f"LATEST already names {version}"
            if current is not None and current > version:
                return f"LATEST names the newer {current}; {version} is not published over it"
            return None

        return self._move_latest(version, "publish", reason, run_id, decide)

    def rollback_to(
        self, version: str, *, reason: str, run_id: str | None = None, verify: bool = True
    ) -> PublishResult:
        """Moves LATEST to an earlier complete version (checksums verified first)."""
        if verify:
            self.verify(version)
        else:
            self.manifest(version)

        def decide(current: str | None) -> str | None:
            return f"LATEST already names {version}" if current == version else None

        return self._move_latest(version, "rollback", reason, run_id, decide)

    def _move_latest(
        self,
        version: str,
        action: str,
        reason: str,
        run_id: str | None,
        decide: Callable[[str | None], str | None],
    ) -> PublishResult:
        """The compare-and-swap loop behind publish and rollback.

        `decide(current)` returns a reason not to move (LATEST stays), or None to move.
        It is asked again after every lost race, against the value that won.
        """
        key = self._key(LATEST)
        retries = self.store.config.cas_retries
        for attempt in range(retries):
            current, generation = self.backend.read_pointer(key)
            refusal = decide(current)
            if refusal:
                log.info("%s: %s", self.name, refusal)
                return PublishResult(False, current, refusal)
            try:
                new_generation = self.backend.swap_pointer(key, version, generation)
            except PointerConflictError:
                time.sleep(random.uniform(0, 0.01 * (attempt + 1)))  # back off, then re-read
                continue
            move = PointerMove(
                at=now_iso(),
                kind=self.name,
                action=action,
                from_version=current,
                to_version=version,
                reason=reason,
                by=actor(),
                run_id=run_id,
                generation=new_generation,
            )
            # The pointer is the truth; the log follows it. A crash between the two loses
            # one history line, never the pointer's consistency.
            self.backend.append_line(self._key(HISTORY), move.to_json())
            log.info("%s: LATEST %s -> %s (%s)", self.name, current, version, action)
            return PublishResult(True, version, f"LATEST moved from {current} to {version}", move)
        raise PointerConflictError(
            f"{self.name}: LATEST kept changing; gave up after {retries} attempts "
            "(raise store.cas_retries if many publishers race)"
        )

    # -- retention ----------------------------------------------------------------------

    def retain(self, keep: int, *, dry_run: bool = False) -> RetentionReport:
        """Deletes all but the newest `keep` complete versions, and abandoned incomplete ones.

        Never deletes the version LATEST names (re-read before each deletion, so a
        concurrent rollback is respected). Incomplete versions younger than
        `store.incomplete_grace_hours` may still be being written and are kept.
        """
        if keep < 1:
            raise ValueError(f"keep must be at least 1, got {keep}")
        latest = self.latest()
        infos = self.versions()
        complete = [v.name for v in infos if v.complete]
        protected = set(complete[-keep:]) | ({latest} if latest else set())
        grace_s = self.store.config.incomplete_grace_hours * 3600
        doomed = [v for v in complete if v not in protected]
        for info in infos:
            if not info.complete and self._age_s(info.name) > grace_s:
                doomed.append(info.name)
        deleted = []
        for version in sorted(doomed):
            if dry_run:
                deleted.append(version)
                continue
            if version == self.latest():
                continue
            self._delete_objects(version)
            deleted.append(version)
        kept = [v.name for v in infos if v.name not in deleted]
        return RetentionReport(kept=kept, deleted=deleted, dry_run=dry_run)

    def discard_incomplete(self, version: str) -> None:
        """Removes the leftovers of an unfinished attempt at `version` (for writers, like
        the Beam jobs, that write a version's files from many workers, not through
        `new_version`). Refuses a complete version: those are immutable."""
        validate_version(version)
        if self.is_complete(version):
            raise VersionExistsError(f"{self.name}/{version} is complete; versions are immutable")
        self._delete_objects(version)

    def _age_s(self, version: str) -> float:
        newest = max((o.updated for o in self.backend.list_objects(self._key(version))), default=0)
        return time.time() - newest

    def _delete_objects(self, version: str) -> None:
        # The manifest goes first: from that moment the version is incomplete and unread.
        self.backend.delete(self._key(version, MANIFEST))
        for obj in list(self.backend.list_objects(self._key(version))):
            self.backend.delete(obj.key)


@dataclass
class VersionWriter:
    """Collects a version's files, then writes its manifest last (see `new_version`)."""

    kind: ArtifactKind
    version: str
    parents: dict[str, str]
    params: dict[str, Any]
    created_by: str
    metrics: dict[str, Any] = field(default_factory=dict)
    files: dict[str, FileEntry] = field(default_factory=dict)
    manifest: Manifest | None = None

    def _key(self, name: str) -> str:
        return self.kind._key(self.version, validate_file_name(name))

    def add_bytes(self, name: str, data: bytes) -> None:
        self.kind.backend.write_bytes(self._key(name), data)
        self.files[name] = FileEntry(len(data), sha256_bytes(data))

    def add_file(self, name: str, path: Path) -> None:
        with open(path, "rb") as f:
            size, digest = sha256_stream(f)
        self.kind.backend.upload_file(self._key(name), Path(path))
        self.files[name] = FileEntry(size, digest)

    def add_directory(self, name: str, path: Path) -> None:
        """Adds every file under `path` as `name/<relative path>` (e.g. a SavedModel)."""
        for file in sorted(p for p in Path(path).rglob("*") if p.is_file()):
            self.add_file(f"{name}/{file.relative_to(path).as_posix()}", file)

    def commit(self) -> Manifest:
        if not self.files:
            raise ValueError(f"{self.kind.name}/{self.version}: a version needs at least one file")
        manifest = Manifest(
            kind=self.kind.name,
            version=self.version,
            files=dict(self.files),
            created_at=now_iso(),
            created_by=self.created_by,
            parents=dict(self.parents),
            params=dict(self.params),
            metrics=dict(self.metrics),
        )
        manifest_key = self.kind._key(self.version, MANIFEST)
        if not self.kind.backend.create_bytes(manifest_key, manifest.to_json()):
            raise VersionExistsError(
                f"{self.kind.name}/{self.version} was completed by another writer meanwhile"
            )
        self.manifest = manifest
        return manifest

    def __enter__(self) -> VersionWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        # On error the directory stays incomplete: no manifest, so nothing reads it.


def _manifest_entry(manifest: Manifest, name: str) -> FileEntry:
    try:
        return manifest.files[name]
    except KeyError:
        raise FileNotFoundError(
            f"{manifest.kind}/{manifest.version} has no file {name!r} "
            f"(it has: {', '.join(sorted(manifest.files))})"
        ) from None
