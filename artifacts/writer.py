"""Writing one version: stage its files in the attempt's own folder, then the manifest.

`ArtifactKind.new_version` hands out a `VersionWriter`; see `artifacts.store` for the
layout and why each attempt stages apart.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from artifacts.errors import CorruptArtifactError, InvalidNameError, VersionExistsError
from artifacts.manifest import FileEntry, Manifest, now_iso, sha256_bytes, sha256_stream
from artifacts.names import ATTEMPTS, MANIFEST, REFUSED, validate_file_name

if TYPE_CHECKING:
    from artifacts.store import ArtifactKind


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


def check_attempt(attempt: str) -> str:
    if not isinstance(attempt, str) or not all(c in "0123456789abcdef" for c in attempt) or not 8 <= len(attempt) <= 64:
        raise InvalidNameError(f"attempt id {attempt!r} must be 8 to 64 lower-case hex digits (see new_attempt_id)")
    return attempt
