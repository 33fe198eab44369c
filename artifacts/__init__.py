"""Versioned artifacts with manifests and a compare-and-swap LATEST pointer.

Local directories and Google Cloud Storage behind one interface; see `artifacts.store`.
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
from artifacts.manifest import Manifest
from artifacts.names import version_name
from artifacts.store import PREVIOUS, ArtifactKind, ArtifactStore, PointerMove, PublishResult

# The kinds the pipeline's stages exchange (DESIGN.md, "Artifact store layout").
MODELS = "models/two_tower"
USER_EMBEDDINGS = "embeddings/users"
STORY_EMBEDDINGS = "embeddings/stories"
CREATOR_EMBEDDINGS = "embeddings/creators"
STORY_INDEX = "indexes/stories"
CREATOR_INDEX = "indexes/creators"
USER_INDEX = "indexes/users"

__all__ = [
    "CREATOR_EMBEDDINGS",
    "CREATOR_INDEX",
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
    "version_name",
]
