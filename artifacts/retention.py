"""Retention of a kind's versions: keep the newest N complete ones and what LATEST names.

Methods of `artifacts.store.ArtifactKind` (a mixin, kept apart from reading and writing
versions); they use its `versions`, `latest`, `is_complete` and `_key`.
"""

from __future__ import annotations

import time
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from artifacts.errors import CorruptArtifactError, VersionExistsError
from artifacts.names import ATTEMPTS, MANIFEST, validate_version
from artifacts.writer import check_attempt

if TYPE_CHECKING:
    from artifacts.backend import Backend
    from artifacts.store import ArtifactStore


@dataclass(frozen=True)
class RetentionReport:
    kept: list[str]
    deleted: list[str]
    dry_run: bool
    stale_attempts: list[str] = field(default_factory=list)  # "<version>/<attempt>" staging removed


class Retention:
    """`retain` and `discard_incomplete` of one kind (see the module)."""

    name: str
    store: ArtifactStore
    backend: Backend

    def retain(self, keep: int, *, dry_run: bool = False, pinned: Collection[str] = ()) -> RetentionReport:
        """Deletes all but the newest `keep` complete versions, and abandoned incomplete ones.

        "Newest" is the store's commit order. Never deletes the version LATEST names
        (re-read before each deletion, so a concurrent rollback is respected), nor those
        in `pinned` (versions a reader still needs, e.g. `orchestration.retention`'s). Incomplete
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
        protected = set(complete[-keep:]) | ({latest} if latest else set()) | set(pinned)
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
            self.backend.delete_prefix(self._key(version, ATTEMPTS, check_attempt(attempt)))
        else:
            self._delete_version(version)

    def _age_s(self, prefix: str) -> float:
        newest = self.backend.last_modified(prefix)
        return float("inf") if newest is None else time.time() - newest

    def _delete_version(self, version: str) -> None:
        # The manifest goes first: from that moment the version is incomplete and unread.
        self.backend.delete(self._key(version, MANIFEST))
        self.backend.delete_prefix(self._key(version))
