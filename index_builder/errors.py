"""Errors of the index builder. Each message says what was wrong and what to do."""

from artifacts.errors import ArtifactError


class IndexValidationError(ArtifactError):
    """A built index (or the snapshot it was built from) failed validation: nothing was published."""


class IndexRollbackRefusedError(ArtifactError):
    """A rollback target was built from a different model than the served user embeddings."""
