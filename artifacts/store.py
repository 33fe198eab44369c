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

This module reads versions (`ArtifactStore`, `ArtifactKind`); writing one is
`artifacts.writer`, moving LATEST and its history `artifacts.pointer`, retention
`artifacts.retention` (the last two are methods of `ArtifactKind`, kept in their own modules).

Typical use:

    store = ArtifactStore.from_config(cfg)
    snapshots = store.kind("embeddings/users")
    with snapshots.new_version(name, parents={"model_version": mv}) as version:
        version.add_file("part-00000.parquet", path)
        version.metrics["count"] = n
    snapshots.publish(name, reason="scheduled user dataflow", run_id=run_id)
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from artifacts.backend import Backend, open_backend
from artifacts.errors import (
    AmbiguousVersionError,
    CorruptArtifactError,
    IncompleteVersionError,
    UnknownVersionError,
    VersionExistsError,
)
from artifacts.manifest import (
    FileEntry,
    Manifest,
    check_entry,
    sha256_bytes,
    sha256_stream,
)
from artifacts.names import (
    ATTEMPTS,
    LATEST,
    MANIFEST,
    REFUSED,
    validate_file_name,
    validate_kind,
    validate_version,
)
from artifacts.pointer import LatestPointer, actor
from artifacts.retention import Retention
from artifacts.writer import VersionWriter, check_attempt, new_attempt_id
from config import StoreConfig

if TYPE_CHECKING:
    from config import EbrConfig


# Top-level folders that hold versioned kinds (two levels: "<group>/<name>").
VERSIONED_GROUPS = ("models", "embeddings", "indexes")
# The name `resolve` reads as "the version published before the one LATEST names".
PREVIOUS = "previous"
# Versions an error message lists (newest first): enough to choose from, short enough to read.
LISTED_VERSIONS = 3


@dataclass(frozen=True)
class VersionInfo:
    name: str
    complete: bool
    manifest: Manifest | None = None
    problem: str | None = None  # why a manifest that exists cannot be read


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


class ArtifactKind(LatestPointer, Retention):
    """The versions of one kind of artifact (`models/two_tower`, `indexes/stories`, ...).

    Reading and writing versions are here; `publish`, `rollback_to` and `history` come
    from `artifacts.pointer`, `retain` and `discard_incomplete` from `artifacts.retention`.
    """

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
        target = dest / version
        self.download_files(version, target, {name: name for name in manifest.files})
        (target / MANIFEST).write_bytes(manifest.to_json())
        return target

    def download_files(self, version: str, target: Path, names: dict[str, str]) -> None:
        """Copies some files of a complete version into `target`, verifying each: `names`
        maps a stored file name to the name it gets there (a shard server keeps its shard's
        files under their unsharded names).

        A file already there with the right size and checksum is kept; a download lands in
        a `.part` file first and replaces the target only once it matches the manifest.

        Raises:
          CorruptArtifactError: a file does not match the manifest (its `.part` is removed).
          FileNotFoundError: a name the manifest does not list.
        """
        manifest = self.manifest(version)
        prefix = self._files_prefix(manifest)
        target.mkdir(parents=True, exist_ok=True)
        for stored, local in names.items():
            entry = _manifest_entry(manifest, validate_file_name(stored))
            path = target / local
            if path.is_file() and path.stat().st_size == entry.size:
                with path.open("rb") as f:
                    if sha256_stream(f)[1] == entry.sha256:
                        continue
            tmp = path.with_name(f"{path.name}.part")
            key = self.backend.join(prefix, stored)
            self.backend.download_file(key, tmp)
            with tmp.open("rb") as f:
                size, digest = sha256_stream(f)
            try:
                check_entry(f"{self.backend.uri}/{key}", entry, size, digest)
            except CorruptArtifactError:
                tmp.unlink(missing_ok=True)
                raise
            os.replace(tmp, path)

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
        attempt = check_attempt(attempt) if attempt else new_attempt_id()
        return VersionWriter(self, version, parents or {}, params or {}, created_by or actor(), attempt=attempt)

    def staging_key(self, version: str, attempt: str) -> str:
        """The key prefix one write attempt stages its files under."""
        return self._key(validate_version(version), ATTEMPTS, check_attempt(attempt))

    def refusal(self, version: str, attempt: str) -> dict[str, Any] | None:
        """What `VersionWriter.refuse` recorded for this attempt (None: it did not refuse)."""
        key = self._key(validate_version(version), ATTEMPTS, check_attempt(attempt), REFUSED)
        try:
            return json.loads(self.backend.read_bytes(key))
        except FileNotFoundError:
            return None
        except ValueError as err:
            raise CorruptArtifactError(f"{self.backend.uri}/{key} is unreadable: {err}") from None

    # -- retention ----------------------------------------------------------------------


def _manifest_entry(manifest: Manifest, name: str) -> FileEntry:
    try:
        return manifest.files[name]
    except KeyError:
        raise FileNotFoundError(
            f"{manifest.kind}/{manifest.version} has no file {name!r} (it has: {', '.join(sorted(manifest.files))})"
        ) from None
