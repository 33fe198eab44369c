"""Names in the artifact store: kinds, versions and files inside a version.

Names end up in paths and object keys, so they are validated before any I/O: a name
with `/`, `..`, a leading dot or any character outside a small alphabet is refused.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

from artifacts.errors import InvalidNameError

# "embeddings/users", "indexes/stories", "models/two_tower": lower-case segments.
_KIND_SEGMENT = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
# "20261123T185100Z-ebr_train-scheduled": starts alphanumeric, no slash, <= 128 chars.
_VERSION = re.compile(r"^[0-9A-Za-z][0-9A-Za-z._+-]{0,127}$")
# One segment of a file path inside a version ("user_tower/variables/variables.index").
_FILE_SEGMENT = re.compile(r"^[0-9A-Za-z_][0-9A-Za-z._+=-]{0,254}$")

MANIFEST = "MANIFEST.json"
LATEST = "LATEST"
HISTORY = "HISTORY.jsonl"
# Inside a version folder: one staging folder per write attempt (see ArtifactKind.new_version).
# The leading dot keeps it out of the file-name alphabet, so no file of a version can clash.
ATTEMPTS = ".attempts"
# Beside LATEST: a counter whose generation orders versions by when they were committed.
SEQUENCE = ".SEQUENCE"
# In an attempt's staging folder, instead of a manifest: why the attempt will not commit.
REFUSED = "_REFUSED.json"
RESERVED_VERSION_NAMES = {MANIFEST, LATEST, HISTORY}


def validate_kind(kind: str) -> str:
    segments = kind.split("/")
    if not kind or not all(_KIND_SEGMENT.fullmatch(s) for s in segments):
        raise InvalidNameError(
            f"artifact kind {kind!r} must be lower-case path segments like 'embeddings/users' or 'indexes/stories'"
        )
    return kind


def validate_version(version: str) -> str:
    if (
        not isinstance(version, str)
        or not _VERSION.fullmatch(version)
        or ".." in version
        or version in RESERVED_VERSION_NAMES
    ):
        raise InvalidNameError(
            f"version name {version!r} is not allowed: use letters, digits, '.', '_', '+', '-' "
            "(no '/', no '..', at most 128 characters, not a reserved file name)"
        )
    return version


def validate_file_name(name: str) -> str:
    segments = name.split("/")
    if (
        not name
        or name == MANIFEST
        or not all(_FILE_SEGMENT.fullmatch(s) and s not in (".", "..") for s in segments)
        or any(".." in s for s in segments)
    ):
        raise InvalidNameError(
            f"file name {name!r} inside a version must be a relative path of plain segments "
            f"(no '..', no leading '/' or '.', not {MANIFEST})"
        )
    return name


def version_name(made_by: str, when: datetime | None = None) -> str:
    """A version name that sorts by time and says what made it.

    >>> version_name("ebr_train scheduled__2026-11-23", datetime(2026, 11, 23, 18, 51, tzinfo=UTC))
    '20261123T185100Z-ebr_train-scheduled__2026-11-23'

    The same `made_by` and `when` always give the same name, which is what makes a rerun
    of the same DAG run (same logical date) land on the same version.
    """
    when = (when or datetime.now(UTC)).astimezone(UTC)
    slug = re.sub(r"[^0-9A-Za-z._+-]+", "-", made_by).strip("-.")[:100] or "manual"
    return validate_version(f"{when:%Y%m%dT%H%M%SZ}-{slug}")
