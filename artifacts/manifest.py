"""`MANIFEST.json`: the last file written into a version, and what makes it complete.

A manifest names every file of the version with its byte size and sha256, the parents
the version was made from (e.g. `{"model_version": ..., "embedding_snapshot": ...}`),
the parameters, the quality figures and a schema version. Readers trust nothing that
the manifest does not list, and check every listed file against it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, BinaryIO

from artifacts.errors import CorruptArtifactError
from artifacts.names import validate_file_name, validate_kind, validate_version

SCHEMA_VERSION = 1
_CHUNK = 4 * 1024 * 1024


@dataclass(frozen=True)
class FileEntry:
    size: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    kind: str
    version: str
    files: dict[str, FileEntry]
    created_at: str
    created_by: str
    parents: dict[str, str] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files.values())

    def to_json(self) -> bytes:
        body = asdict(self)
        body["files"] = {name: asdict(entry) for name, entry in sorted(self.files.items())}
        return (json.dumps(body, indent=2, sort_keys=True) + "\n").encode()

    @classmethod
    def from_json(cls, data: bytes, where: str) -> Manifest:
        """Parses and checks a manifest; `where` names it in error messages."""
        try:
            body = json.loads(data)
            schema = body.get("schema_version")
            if schema != SCHEMA_VERSION:
                raise ValueError(f"schema_version {schema!r}, this code reads {SCHEMA_VERSION}")
            files = {
                validate_file_name(name): FileEntry(int(e["size"]), str(e["sha256"]))
                for name, e in body["files"].items()
            }
            return cls(
                kind=validate_kind(body["kind"]),
                version=validate_version(body["version"]),
                files=files,
                created_at=str(body["created_at"]),
                created_by=str(body["created_by"]),
                parents=dict(body.get("parents", {})),
                params=dict(body.get("params", {})),
                metrics=dict(body.get("metrics", {})),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise CorruptArtifactError(f"manifest {where} is unreadable: {err}") from None


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def sha256_stream(stream: BinaryIO) -> tuple[int, str]:
    """(size in bytes, hex sha256) of everything left in `stream`."""
    digest, size = hashlib.sha256(), 0
    while chunk := stream.read(_CHUNK):
        digest.update(chunk)
        size += len(chunk)
    return size, digest.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_entry(where: str, expected: FileEntry, size: int, sha256: str) -> None:
    if size != expected.size:
        raise CorruptArtifactError(
            f"{where}: {size} bytes, manifest says {expected.size} (truncated or altered); "
            "roll back to an earlier version or rebuild this one"
        )
    if sha256 != expected.sha256:
        raise CorruptArtifactError(
            f"{where}: sha256 {sha256[:16]}… differs from manifest {expected.sha256[:16]}… "
            "(altered file); roll back to an earlier version or rebuild this one"
        )
