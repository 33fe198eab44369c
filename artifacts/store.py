"""The artifact store: versioned, immutable directories and a LATEST pointer per kind.

Layout (the contract between the pipeline's stages, see DESIGN.md):

    ROOT/<kind>/<version>/.attempts/<attempt>/...  one write attempt's files
    ROOT/<kind>/<version>/MANIFEST.json            written last: a version without it is
                                                   incomplete; it names the attempt whose
                                                   files it hashed
    ROOT/<kind>/<version>/...                      the files of versions written before
                                                   attempts existed (manifest without one)
    ROOT/<kind>/LATEST                             the published version's name
    ROOT/<kind>/HISTORY.jsonl                      every pointer move: when, from, to, why, by whom

Publishing is: write the files into the attempt's own staging folder, write the manifest
(create-if-absent, so a complete version can never be overwritten), then move LATEST by
compare-and-swap. Two attempts at one version name (a retried task beside its zombie
predecessor) never write the same object: the first manifest wins, the other attempt
deletes its staging, and the winner's files are exactly the bytes it hashed. A publisher
that crashes at any point leaves LATEST on the complete version it named before.

"Newer" is the store's own commit order: every manifest records a `sequence` taken from
a counter beside LATEST at commit time, never inferred from the free-form version name.

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
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from artifacts.backend import Backend, open_backend
from artifacts.errors import (
    AmbiguousVersionError,
    ArtifactError,
    CorruptArtifactError,
    IncompleteVersionError,
    InvalidNameError,
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
    ATTEMPTS,
    HISTORY,
    LATEST,
    MANIFEST,
    REFUSED,
    SEQUENCE,
    validate_file_name,
    validate_kind,
    validate_version,
)
from config import StoreConfig

if TYPE_CHECKING:
    from config import EbrConfig

log = logging.getLogger(__name__)

# Top-level folders that hold versioned kinds (two levels: "<group>/<name>").
VERSIONED_GROUPS = ("models", "embeddings", "indexes")
# The name `resolve` reads as "the version published before the one LATEST names".
PREVIOUS = "previous"
# Versions an error message lists (newest first): enough to choose from, short enough to read.
LISTED_VERSIONS = 3


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
    problem: str | None = None  # why a manifest that exists cannot be read


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
    """What a publish or rollback did.

    `skipped` says why LATEST did not move: "already" (it names the version) or "older"
    (it names a version committed after this one: a late or backfilled run). Callers
    should say so; an "older" skip is never silent.
    """

    moved: bool
    latest: str | None
    detail: str
    move: PointerMove | None = None
    skipped: str | None = None


@dataclass(frozen=True)
class RetentionReport:
    kept: list[str]
    deleted: list[str]
    dry_run: bool
    stale_attempts: list[str] = field(default_factory=list)  # "<version>/<attempt>" staging removed


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
        return [f"{group}/{name}" for group in VERSIONED_GROUPS for name in self.backend.list_children(group)]


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
        """The version LATEST names (None: nothing published yet).

        Raises CorruptArtifactError when LATEST is not a version name (binary, a folder,
        garbage): only this kind is affected, every other kind reads on.
        """
        value = self.backend.read_pointer(self._key(LATEST))[0]
        if value is None:
            return None
        try:
            return validate_version(value)
        except ValueError:
            raise CorruptArtifactError(
                f"{self.backend.uri}/{self._key(LATEST)} holds {value[:60]!r}, not a version name; "
                f"publish or roll back {self.name} to a complete version to rewrite it"
            ) from None

    def is_complete(self, version: str) -> bool:
        return self.backend.exists(self._key(validate_version(version), MANIFEST))

    def versions(self) -> list[VersionInfo]:
        """Every version folder: complete ones oldest first (by commit order), then the
        incomplete ones (being written, or their writer died) by name.

        Never raises for what a crash or a write in progress leaves behind (an empty
        folder, only temporary files, no manifest); a manifest that exists but cannot be
        read is listed with its `problem`.
        """
        complete, incomplete = [], []
        for name in self.backend.list_children(self.name):
            try:
                validate_version(name)
            except ValueError:
                continue  # not ours (e.g. a stray folder)
            try:
                manifest = self._read_manifest(name)
            except CorruptArtifactError as err:
                incomplete.append(VersionInfo(name, False, None, problem=str(err)))
                continue
            if manifest is None:
                incomplete.append(VersionInfo(name, False))
            else:
                complete.append(VersionInfo(name, True, manifest))
        complete.sort(key=lambda v: v.manifest.order)
        return complete + incomplete

    def complete_versions(self) -> list[str]:
        return [v.name for v in self.versions() if v.complete]

    def _read_manifest(self, version: str) -> Manifest | None:
        """The version's manifest, or None when it has none (incomplete or unknown)."""
        key = self._key(version, MANIFEST)
        try:
            data = self.backend.read_bytes(key)
        except FileNotFoundError:
            return None
        except IsADirectoryError:
            raise CorruptArtifactError(f"{self.backend.uri}/{key} is a folder, not a manifest") from None
        manifest = Manifest.from_json(data, f"{self.backend.uri}/{key}")
        if manifest.kind != self.name or manifest.version != version:
            raise CorruptArtifactError(f"{key} describes {manifest.kind}/{manifest.version}, not {self.name}/{version}")
        return manifest

    def manifest(self, version: str) -> Manifest:
        validate_version(version)
        manifest = self._read_manifest(version)
        if manifest is not None:
            return manifest
        if self.backend.last_modified(self._key(version)) is not None:
            raise IncompleteVersionError(
                f"{self.name}/{version} has no {MANIFEST}: it is still being written or "
                "its writer died; it is never read (retention removes it later)"
            )
        raise UnknownVersionError(f"{self.name} has no version {version!r} ({self.newest_complete_hint()})")

    def newest_complete_hint(self) -> str:
        """ "newest complete: a, b, c (and 7 older)": the few newest, for error messages."""
        complete = self.complete_versions()[::-1]
        if not complete:
            return "it has no complete version"
        more = f" (and {len(complete) - LISTED_VERSIONS} older)" if len(complete) > LISTED_VERSIONS else ""
        return f"newest complete: {', '.join(complete[:LISTED_VERSIONS])}{more}"

    def resolve(self, name: str) -> str:
        """The full name of the version `name` names.

        `name` is a version's full name, an unambiguous prefix of one (version names
        start with their UTC time, so "20261123T18" is usually enough), or `previous`:
        the newest complete version committed before the one LATEST names that LATEST
        has named before (HISTORY.jsonl), i.e. the one served before it, never one that
        was written but not published. A full name wins over a prefix of a longer one
        and over the word `previous`.

        Raises UnknownVersionError (nothing matches, or no previous version),
        AmbiguousVersionError (the prefix matches several; they are listed, newest
        first), InvalidNameError (not a possible version name).
        """
        validate_version(name)
        names = self._version_names()
        if name in names:
            return name
        if name == PREVIOUS:
            return self._previous()
        matches = [n for n in names if n.startswith(name)]
        if len(matches) == 1:
            return matches[0]
        if not matches:
            raise UnknownVersionError(f"{self.name} has no version {name!r} ({self.newest_complete_hint()})")
        ordered = self._newest_first(matches)
        more = f" and {len(ordered) - LISTED_VERSIONS} more" if len(ordered) > LISTED_VERSIONS else ""
        raise AmbiguousVersionError(
            f"{self.name}: {name!r} matches {len(matches)} versions ({', '.join(ordered[:LISTED_VERSIONS])}{more}); "
            "type more of the name"
        )

    def _version_names(self) -> list[str]:
        """The names of every version folder (one listing; no manifest is read)."""
        names = []
        for name in self.backend.list_children(self.name):
            try:
                names.append(validate_version(name))
            except ValueError:
                continue  # not ours (e.g. a stray folder)
        return names

    def _newest_first(self, names: list[str]) -> list[str]:
        """Complete ones by commit order, newest first, then the others by name."""
        complete, other = [], []
        for name in names:
            try:
                manifest = self._read_manifest(name)
            except CorruptArtifactError:
                manifest = None
            if manifest is None:
                other.append(name)
            else:
                complete.append((manifest.order, name))
        return [n for _, n in sorted(complete, reverse=True)] + sorted(other)

    def _previous(self) -> str:
        latest = self.latest()
        if latest is None:
            raise UnknownVersionError(f"{self.name} has no LATEST yet, so no previous version; name a version")
        complete = self.complete_versions()
        if latest not in complete:
            raise UnknownVersionError(
                f"{self.name}: LATEST names {latest}, not a complete version; name the version to go back to"
            )
        published = {move.to_version for move in self.history()}
        earlier = [v for v in complete[: complete.index(latest)] if v in published]
        if not earlier:
            raise UnknownVersionError(
                f"{self.name}: no complete version committed before {latest} was ever published, so there is no "
                "previous one; name a version"
            )
        return earlier[-1]

    def _files_prefix(self, manifest: Manifest) -> str:
        """Where a complete version's files are: its attempt's staging folder, or the
        version folder itself for versions written before attempts existed."""
        if manifest.attempt:
            return self._key(manifest.version, ATTEMPTS, manifest.attempt)
        return self._key(manifest.version)

    def file_key(self, version: str, name: str) -> str:
        """The object key of one file of a complete version (resolved through its manifest)."""
        manifest = self.manifest(version)
        _manifest_entry(manifest, validate_file_name(name))
        return self.backend.join(self._files_prefix(manifest), name)

    def local_dir(self, version: str) -> Path | None:
        """The folder holding a complete version's files when the root is on this machine
        (for readers that load a version in place), else None."""
        return self.backend.local_path(self._files_prefix(self.manifest(version)))

    def verify(self, version: str) -> Manifest:
        """Reads every file of a version and checks size and sha256 against the manifest."""
        manifest = self.manifest(version)
        prefix = self._files_prefix(manifest)
        for name, entry in manifest.files.items():
            key = self.backend.join(prefix, name)
            try:
                with self.backend.open_read(key) as stream:
                    size, digest = sha256_stream(stream)
            except FileNotFoundError:
                raise CorruptArtifactError(f"{self.backend.uri}/{key} is listed in the manifest but missing") from None
            check_entry(f"{self.backend.uri}/{key}", entry, size, digest)
        return manifest

    def read_file(self, version: str, name: str) -> bytes:
        """One file of a complete version, checked against its manifest entry."""
        manifest = self.manifest(version)
        entry = _manifest_entry(manifest, validate_file_name(name))
        data = self.backend.read_bytes(self.backend.join(self._files_prefix(manifest), name))
        check_entry(f"{self.name}/{version}/{name}", entry, len(data), sha256_bytes(data))
        return data

    def download(self, version: str, dest: Path) -> Path:
        """Copies a complete version into `dest/<version>/`, verifying every file.

        Files already present with the right size and checksum are kept, so a local
        cache can call this repeatedly. The manifest is copied last.
        """
        manifest = self.manifest(version)
        prefix = self._files_prefix(manifest)
        target = dest / version
        for name, entry in manifest.files.items():
            path = target / name
            if path.is_file() and path.stat().st_size == entry.size:
                with path.open("rb") as f:
                    if sha256_stream(f)[1] == entry.sha256:
                        continue
            tmp = path.with_name(f"{path.name}.part")
            key = self.backend.join(prefix, name)
            self.backend.download_file(key, tmp)
            with tmp.open("rb") as f:
                size, digest = sha256_stream(f)
            try:
                check_entry(f"{self.backend.uri}/{key}", entry, size, digest)
            except CorruptArtifactError:
                tmp.unlink(missing_ok=True)
                raise
            os.replace(tmp, path)
        (target / MANIFEST).write_bytes(manifest.to_json())
        return target

    def history(self) -> list[PointerMove]:
        key = self._key(HISTORY)
        try:
            data = self.backend.read_bytes(key)
        except FileNotFoundError:
            return []
        moves = []
        for number, line in enumerate(data.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                moves.append(PointerMove.from_json(line.decode("utf-8")))
            except (ValueError, TypeError) as err:
                raise CorruptArtifactError(
                    f"{self.backend.uri}/{key} line {number} is not a pointer move: {err}"
                ) from None
        return moves

    # -- writing ------------------------------------------------------------------------

    def new_version(
        self,
        version: str,
        *,
        parents: dict[str, str] | None = None,
        params: dict[str, Any] | None = None,
        created_by: str | None = None,
        attempt: str | None = None,
    ) -> VersionWriter:
        """A writer for a new version; its manifest is written when the `with` block ends.

        Each writer stages its files in its own attempt folder, so another attempt at the
        same name (running, or dead) is neither disturbed nor able to disturb this one;
        the first commit wins. Pass the same `attempt` id to writers in several processes
        that write one attempt together (a Beam job's workers and its commit step);
        default: a fresh id.

        Raises VersionExistsError if the version is complete already (check
        `is_complete()` first to make a rerun reuse it).
        """
        validate_version(version)
        if self.is_complete(version):
            raise VersionExistsError(
                f"{self.name}/{version} is complete already and versions are immutable; "
                "reuse it or choose a new version name"
            )
        attempt = _check_attempt(attempt) if attempt else new_attempt_id()
        return VersionWriter(self, version, parents or {}, params or {}, created_by or actor(), attempt=attempt)

    def staging_key(self, version: str, attempt: str) -> str:
        """The key prefix one write attempt stages its files under."""
        return self._key(validate_version(version), ATTEMPTS, _check_attempt(attempt))

    def refusal(self, version: str, attempt: str) -> dict[str, Any] | None:
        """What `VersionWriter.refuse` recorded for this attempt (None: it did not refuse)."""
        key = self._key(validate_version(version), ATTEMPTS, _check_attempt(attempt), REFUSED)
        try:
            return json.loads(self.backend.read_bytes(key))
        except FileNotFoundError:
            return None
        except ValueError as err:
            raise CorruptArtifactError(f"{self.backend.uri}/{key} is unreadable: {err}") from None

    def publish(self, version: str, *, reason: str, run_id: str | None = None, verify: bool = True) -> PublishResult:
        """Moves LATEST to `version` by compare-and-swap, after checking every file of it
        against its manifest (`verify=False` skips the checksums, never the manifest).

        Idempotent: publishing the version LATEST already names changes nothing. A
        version committed before the one LATEST names (the store's commit order, not the
        names) is not published either: a slow or backfilled run never moves LATEST
        backwards; that is what `rollback_to` is for. Both come back with `skipped` set.
        """
        manifest = self.verify(version) if verify else self.manifest(version)

        def decide(current: str | None) -> tuple[str, str] | None:
            if current == version:
                return "already", f"LATEST already names {version}"
            newer = self._manifest_or_none(current) if current is not None else None
            if newer is not None and newer.order > manifest.order:
                return "older", (
                    f"LATEST names the newer {current} (committed after {version}); {version} is not "
                    "published over it (use rollback to move LATEST back)"
                )
            return None

        return self._move_latest(version, "publish", reason, run_id, decide)

    def rollback_to(
        self, version: str, *, reason: str, run_id: str | None = None, verify: bool = True
    ) -> PublishResult:
        """Moves LATEST to an earlier complete version (checksums verified first).

        `version` is anything `resolve` takes: a full name, a unique prefix, `previous`.
        """
        version = self.resolve(version)
        if verify:
            self.verify(version)
        else:
            self.manifest(version)

        def decide(current: str | None) -> tuple[str, str] | None:
            return ("already", f"LATEST already names {version}") if current == version else None

        return self._move_latest(version, "rollback", reason, run_id, decide)

    def _manifest_or_none(self, version: str) -> Manifest | None:
        """The manifest of the version LATEST names, or None if it cannot be read (then
        it is no reason to keep LATEST where it is)."""
        try:
            return self.manifest(version)
        except ArtifactError as err:
            log.warning("%s: LATEST names %r, which cannot be read (%s)", self.name, version, err)
            return None

    def _move_latest(
        self,
        version: str,
        action: str,
        reason: str,
        run_id: str | None,
        decide: Callable[[str | None], tuple[str, str] | None],
    ) -> PublishResult:
        """The compare-and-swap loop behind publish and rollback.

        `decide(current)` returns (why, detail) not to move (LATEST stays), or None to
        move. It is asked again after every lost race, against the value that won. The
        HISTORY.jsonl line is written by the swap itself, in the pointer's order.
        """
        key = self._key(LATEST)
        retries = self.store.config.cas_retries
        for attempt in range(retries):
            current, generation = self.backend.read_pointer(key)
            refusal = decide(current)
            if refusal:
                skipped, detail = refusal
                (log.warning if skipped == "older" else log.info)("%s: %s", self.name, detail)
                return PublishResult(False, current, detail, skipped=skipped)
            move = PointerMove(
                at=now_iso(),
                kind=self.name,
                action=action,
                from_version=current,
                to_version=version,
                reason=reason,
                by=actor(),
                run_id=run_id,
            )
            try:
                new_generation = self.backend.swap_pointer(
                    key,
                    version,
                    generation,
                    log=(self._key(HISTORY), lambda g, move=move: replace(move, generation=g).to_json()),
                )
            except PointerConflictError:
                time.sleep(random.uniform(0, 0.01 * (attempt + 1)))  # back off, then re-read
                continue
            move = replace(move, generation=new_generation)
            log.info("%s: LATEST %s -> %s (%s)", self.name, current, version, action)
            return PublishResult(True, version, f"LATEST moved from {current} to {version}", move)
        raise PointerConflictError(
            f"{self.name}: LATEST kept changing; gave up after {retries} attempts "
            "(raise store.cas_retries if many publishers race)"
        )

    def _next_sequence(self) -> int:
        """A number larger than any this kind handed out before: the generation of the
        `.SEQUENCE` counter after a compare-and-swap bump (it never goes down)."""
        key = self._key(SEQUENCE)
        for attempt in range(max(self.store.config.cas_retries, 20) * 5):
            _, generation = self.backend.read_pointer(key)
            try:
                return self.backend.swap_pointer(key, str(generation + 1), generation)
            except PointerConflictError:
                time.sleep(random.uniform(0, 0.002 * (attempt + 1)))
        raise PointerConflictError(f"{self.name}: the commit sequence kept changing; raise store.cas_retries")

    # -- retention ----------------------------------------------------------------------

    def retain(self, keep: int, *, dry_run: bool = False) -> RetentionReport:
        """Deletes all but the newest `keep` complete versions, and abandoned incomplete ones.

        "Newest" is the store's commit order. Never deletes the version LATEST names
        (re-read before each deletion, so a concurrent rollback is respected). Incomplete
        versions (no manifest: empty folders, temporary files, a dead writer's files) and
        the staging folders of attempts that lost, are removed once nothing in them has
        changed for `store.incomplete_grace_hours` (younger ones may still be written).
        A version whose manifest exists but is unreadable is never deleted.
        """
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
            raise ValueError(f"keep must be a whole number of at least 1, got {keep!r}")
        latest = self._latest_or_none()
        infos = self.versions()
        complete = [v.name for v in infos if v.complete]
        protected = set(complete[-keep:]) | ({latest} if latest else set())
        grace_s = self.store.config.incomplete_grace_hours * 3600
        doomed = [v for v in complete if v not in protected]
        for info in infos:
            if not info.complete and info.problem is None and self._age_s(self._key(info.name)) > grace_s:
                doomed.append(info.name)
        deleted = []
        for version in sorted(doomed):
            if dry_run:
                deleted.append(version)
                continue
            if version == self._latest_or_none():
                continue
            self._delete_version(version)
            deleted.append(version)
        stale = []
        for info in infos:
            if info.complete and info.name not in deleted:
                for attempt in self.backend.list_children(self._key(info.name, ATTEMPTS)):
                    prefix = self._key(info.name, ATTEMPTS, attempt)
                    if attempt != info.manifest.attempt and self._age_s(prefix) > grace_s:
                        if not dry_run:
                            self.backend.delete_prefix(prefix)
                        stale.append(f"{info.name}/{attempt}")
        kept = [v.name for v in infos if v.name not in deleted]
        return RetentionReport(kept=kept, deleted=deleted, dry_run=dry_run, stale_attempts=stale)

    def _latest_or_none(self) -> str | None:
        try:
            return self.latest()
        except CorruptArtifactError as err:
            raise CorruptArtifactError(f"{err} (retention needs to know what LATEST names)") from None

    def discard_incomplete(self, version: str, attempt: str | None = None) -> None:
        """Removes the staging of one unfinished attempt at `version`, or (no `attempt`)
        everything of an incomplete version, e.g. by an operator who knows no writer is
        running. Refuses a complete version: those are immutable."""
        validate_version(version)
        if self.is_complete(version):
            raise VersionExistsError(f"{self.name}/{version} is complete; versions are immutable")
        if attempt is not None:
            self.backend.delete_prefix(self._key(version, ATTEMPTS, _check_attempt(attempt)))
        else:
            self._delete_version(version)

    def _age_s(self, prefix: str) -> float:
        newest = self.backend.last_modified(prefix)
        return float("inf") if newest is None else time.time() - newest

    def _delete_version(self, version: str) -> None:
        # The manifest goes first: from that moment the version is incomplete and unread.
        self.backend.delete(self._key(version, MANIFEST))
        self.backend.delete_prefix(self._key(version))


@dataclass
class VersionWriter:
    """Stages a version's files in its attempt's own folder, then writes the manifest
    last (see `new_version`).

    Files written by other processes into the same attempt (`new_version(..., attempt=)`
    in each) are added to the committing writer with `register`.
    """

    kind: ArtifactKind
    version: str
    parents: dict[str, str]
    params: dict[str, Any]
    created_by: str
    metrics: dict[str, Any] = field(default_factory=dict)
    files: dict[str, FileEntry] = field(default_factory=dict)
    manifest: Manifest | None = None
    attempt: str = field(default_factory=lambda: new_attempt_id())

    @property
    def staging(self) -> str:
        """The key prefix this attempt writes under: no other attempt writes there."""
        return self.kind._key(self.version, ATTEMPTS, self.attempt)

    def _key(self, name: str) -> str:
        return self.kind.backend.join(self.staging, validate_file_name(name))

    def add_bytes(self, name: str, data: bytes) -> FileEntry:
        self.kind.backend.write_bytes(self._key(name), data)
        entry = self.files[name] = FileEntry(len(data), sha256_bytes(data))
        return entry

    def add_file(self, name: str, path: Path) -> FileEntry:
        with open(path, "rb") as f:
            size, digest = sha256_stream(f)
        self.kind.backend.upload_file(self._key(name), Path(path))
        entry = self.files[name] = FileEntry(size, digest)
        return entry

    def add_directory(self, name: str, path: Path) -> None:
        """Adds every file under `path` as `name/<relative path>` (e.g. a SavedModel)."""
        for file in sorted(p for p in Path(path).rglob("*") if p.is_file()):
            self.add_file(f"{name}/{file.relative_to(path).as_posix()}", file)

    def register(self, name: str, entry: FileEntry) -> None:
        """Adds a file another process of this attempt wrote with `add_bytes` (its size
        and sha256 as that process computed them); `commit` checks it is there."""
        validate_file_name(name)
        self.files[name] = entry

    def refuse(self, body: dict[str, Any]) -> None:
        """Records why this attempt will not commit (read back with `ArtifactKind.refusal`);
        the version stays incomplete and retention removes it after the grace period."""
        self.kind.backend.write_bytes(
            self.kind.backend.join(self.staging, REFUSED), json.dumps(body, indent=2).encode()
        )

    def commit(self) -> Manifest:
        if not self.files:
            raise ValueError(f"{self.kind.name}/{self.version}: a version needs at least one file")
        backend = self.kind.backend
        staged = {o.key: o.size for o in backend.list_objects(self.staging)}
        for name, entry in self.files.items():
            if staged.get(self._key(name)) != entry.size:
                raise CorruptArtifactError(
                    f"{backend.uri}/{self._key(name)}: {staged.get(self._key(name), 'no')} bytes staged, "
                    f"{entry.size} registered; the attempt's files changed after they were hashed"
                )
        manifest = Manifest(
            kind=self.kind.name,
            version=self.version,
            files=dict(self.files),
            created_at=now_iso(),
            created_by=self.created_by,
            parents=dict(self.parents),
            params=dict(self.params),
            metrics=dict(self.metrics),
            attempt=self.attempt,
            sequence=self.kind._next_sequence(),
        )
        manifest_key = self.kind._key(self.version, MANIFEST)
        if not backend.create_bytes(manifest_key, manifest.to_json()):
            backend.delete_prefix(self.staging)  # lost: nothing will ever read these files
            raise VersionExistsError(f"{self.kind.name}/{self.version} was completed by another writer meanwhile")
        self.manifest = manifest
        return manifest

    def __enter__(self) -> VersionWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        # On error the attempt stays incomplete: no manifest, so nothing reads it.


def new_attempt_id() -> str:
    return uuid.uuid4().hex


def _check_attempt(attempt: str) -> str:
    if not isinstance(attempt, str) or not all(c in "0123456789abcdef" for c in attempt) or not 8 <= len(attempt) <= 64:
        raise InvalidNameError(f"attempt id {attempt!r} must be 8 to 64 lower-case hex digits (see new_attempt_id)")
    return attempt


def _manifest_entry(manifest: Manifest, name: str) -> FileEntry:
    try:
        return manifest.files[name]
    except KeyError:
        raise FileNotFoundError(
            f"{manifest.kind}/{manifest.version} has no file {name!r} (it has: {', '.join(sorted(manifest.files))})"
        ) from None
