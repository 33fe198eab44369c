"""Versioned artifacts with manifests and a compare-and-swap LATEST pointer.

Local directories and Google Cloud Storage behind one interface; see `artifacts.store`
(reading versions), `artifacts.writer` (writing one), `artifacts.pointer` (LATEST and its
history) and `artifacts.retention`.
The kinds and collections every stage names are defined once, in `artifacts.kinds`.
"""

from artifacts.errors import (
    AmbiguousVersionError,
    ArtifactError,
    ArtifactRootError,
    CorruptArtifactError,
    IncompleteVersionError,
    InvalidNameError,
    LockTimeoutError,
    PointerConflictError,
    UnknownVersionError,
    VersionExistsError,
)
from artifacts.kinds import (
    COLLECTIONS,
    CREATOR_EMBEDDINGS,
    CREATOR_INDEX,
    INDEX_KINDS,
    MODELS,
    STORY_EMBEDDINGS,
    STORY_INDEX,
    USER_EMBEDDINGS,
    USER_INDEX,
    index_kind,
    snapshot_kind,
)
from artifacts.manifest import Manifest
from artifacts.names import version_name
from artifacts.pointer import PointerMove, PublishResult
from artifacts.store import PREVIOUS, ArtifactKind, ArtifactStore

__all__ = [
    "COLLECTIONS",
    "CREATOR_EMBEDDINGS",
    "CREATOR_INDEX",
    "INDEX_KINDS",
    "MODELS",
    "PREVIOUS",
    "STORY_EMBEDDINGS",
    "STORY_INDEX",
    "USER_EMBEDDINGS",
    "USER_INDEX",
    "AmbiguousVersionError",
    "ArtifactError",
    "ArtifactRootError",
    "ArtifactKind",
    "ArtifactStore",
    "CorruptArtifactError",
    "IncompleteVersionError",
    "InvalidNameError",
    "LockTimeoutError",
    "Manifest",
    "PointerConflictError",
    "PointerMove",
    "PublishResult",
    "UnknownVersionError",
    "VersionExistsError",
    "index_kind",
    "snapshot_kind",
    "version_name",
]
