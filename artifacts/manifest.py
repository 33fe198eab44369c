"""`MANIFEST.json`: the last file written into a version, and what makes it complete.

A manifest names every file of the version with its byte size and sha256, the parents
the version was made from (e.g. `{"model_version": ..., "embedding_snapshot": ...}`),
the parameters, the quality figures and a schema version. Readers trust nothing that
the manifest does not list, and check every listed file against it.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, BinaryIO

from artifacts.errors import CorruptArtifactError
from artifacts.names import validate_file_name, validate_kind, validate_version

# 2: files may live in a per-attempt staging folder (`attempt`), and `sequence` orders
# versions by commit. Version 1 manifests (files directly under the version folder) are
# still read; code that reads only 1 refuses a 2 instead of looking in the wrong place.
SCHEMA_VERSION = 2
READABLE_SCHEMAS = (1, 2)
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
    # The write attempt whose staging folder holds the files (`<version>/.attempts/<id>/`);
    # None for versions written before attempts existed (files directly in the folder).
    attempt: str | None = None
    # Store-owned commit order within the kind (0: written before it was recorded).
    sequence: int = 0
    schema_version: int = SCHEMA_VERSION

    @property
    def order(self) -> tuple[int, str, str]:
        """What "newer" means: commit sequence, then creation time (the version name only
        breaks ties between versions written before sequences existed)."""
        return (self.sequence, self.created_at, self.version)

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
            if schema not in READABLE_SCHEMAS:
                raise ValueError(f"schema_version {schema!r}, this code reads {READABLE_SCHEMAS}")
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
                attempt=_attempt_id(body.get("attempt")),
                sequence=int(body.get("sequence") or 0),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise CorruptArtifactError(f"manifest {where} is unreadable: {err}") from None


def _attempt_id(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not re.fullmatch(r"[0-9a-f]{8,64}", value):
        raise ValueError(f"attempt {value!r} is not an attempt id")
    return value


def now_iso(timespec: str = "seconds") -> str:
    """The time now in UTC, ISO 8601; pointer moves keep microseconds (`artifacts.pointer`):
    the serving pairing rule orders moves of different kinds by it, often within a second."""
    return datetime.now(UTC).isoformat(timespec=timespec)


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
