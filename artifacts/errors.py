"""Errors of the artifact store. Each message says what was wrong and what to do."""


class ArtifactError(Exception):
    """Base class of every artifact-store error."""


class InvalidNameError(ArtifactError, ValueError):
    """A kind, version or file name is malformed or tries to escape its directory."""


class UnknownVersionError(ArtifactError, LookupError):
    """No directory exists for this version."""


class AmbiguousVersionError(ArtifactError, LookupError):
    """A version prefix matches several versions; the message lists them, newest first."""


class IncompleteVersionError(ArtifactError):
    """The version directory has no MANIFEST.json: it is being written or its writer died."""


class VersionExistsError(ArtifactError):
    """A complete version of this name exists already; versions are immutable."""


class CorruptArtifactError(ArtifactError):
    """A file's size or sha256 differs from what the manifest recorded."""


class PointerConflictError(ArtifactError):
    """LATEST changed between read and write (the compare-and-swap lost the race)."""


class LockTimeoutError(ArtifactError, TimeoutError):
    """The local LATEST lock could not be taken in time."""


class ArtifactRootError(ArtifactError):
    """The artifact root cannot be used: not a directory, a symlink loop, no credentials."""
