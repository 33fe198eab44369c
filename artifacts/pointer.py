"""LATEST and HISTORY.jsonl: how a kind's published version moves.

Publishing and rolling back move `ROOT/<kind>/LATEST` by compare-and-swap (GCS:
generation preconditions; local: a lock and an atomic rename); the swap itself appends
the move to `HISTORY.jsonl`, in the pointer's order. `.SEQUENCE` beside LATEST orders
commits (`ArtifactKind._next_sequence`, asked by `VersionWriter.commit`).

These are methods of `artifacts.store.ArtifactKind` (a mixin, kept apart from reading
and writing versions); they use its `manifest`, `verify`, `resolve` and `_key`.
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import random
import socket
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING

from artifacts.errors import ArtifactError, CorruptArtifactError, PointerConflictError
from artifacts.manifest import Manifest, now_iso
from artifacts.names import HISTORY, LATEST, SEQUENCE

if TYPE_CHECKING:
    from artifacts.backend import Backend
    from artifacts.store import ArtifactStore

# The store's log (operators and the Beam task-log tests read pointer moves under this name).
log = logging.getLogger("artifacts.store")


def actor() -> str:
    """Who is acting, for the history log: user@host and process id."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True)
class PointerMove:
    """One line of HISTORY.jsonl."""

    at: str
    kind: str
    action: str  # "publish" or "rollback"
    from_version: str | None
    to_version: str
    reason: str
    by: str
    run_id: str | None = None
    generation: int | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, line: str) -> PointerMove:
        return cls(**json.loads(line))


@dataclass(frozen=True)
class PublishResult:
    """What a publish or rollback did.

    `skipped` says why LATEST did not move: "already" (it names the version) or "older"
    (it names a version committed after this one: a late or backfilled run). Callers
    should say so; an "older" skip is never silent.
    """

    moved: bool
    latest: str | None
    detail: str
    move: PointerMove | None = None
    skipped: str | None = None


class LatestPointer:
    """Publish, roll back and read the history of one kind's LATEST (see the module)."""

    name: str
    store: ArtifactStore
    backend: Backend

    def history(self) -> list[PointerMove]:
        key = self._key(HISTORY)
        try:
            data = self.backend.read_bytes(key)
        except FileNotFoundError:
            return []
        moves = []
        for number, line in enumerate(data.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                moves.append(PointerMove.from_json(line.decode("utf-8")))
            except (ValueError, TypeError) as err:
                raise CorruptArtifactError(
                    f"{self.backend.uri}/{key} line {number} is not a pointer move: {err}"
                ) from None
        return moves

    def publish(self, version: str, *, reason: str, run_id: str | None = None, verify: bool = True) -> PublishResult:
        """Moves LATEST to `version` by compare-and-swap, after checking every file of it
        against its manifest (`verify=False` skips the checksums, never the manifest).

        Idempotent: publishing the version LATEST already names changes nothing. A
        version committed before the one LATEST names (the store's commit order, not the
        names) is not published either: a slow or backfilled run never moves LATEST
        backwards; that is what `rollback_to` is for. Both come back with `skipped` set.
        """
        manifest = self.verify(version) if verify else self.manifest(version)

        def decide(current: str | None) -> tuple[str, str] | None:
            if current == version:
                return "already", f"LATEST already names {version}"
            newer = self._manifest_or_none(current) if current is not None else None
            if newer is not None and newer.order > manifest.order:
                return "older", (
                    f"LATEST names the newer {current} (committed after {version}); {version} is not "
                    "published over it (use rollback to move LATEST back)"
                )
            return None

        return self._move_latest(version, "publish", reason, run_id, decide)

    def rollback_to(
        self, version: str, *, reason: str, run_id: str | None = None, verify: bool = True
    ) -> PublishResult:
        """Moves LATEST to an earlier complete version (checksums verified first).

        `version` is anything `resolve` takes: a full name, a unique prefix, `previous`.
        """
        version = self.resolve(version)
        if verify:
            self.verify(version)
        else:
            self.manifest(version)

        def decide(current: str | None) -> tuple[str, str] | None:
            return ("already", f"LATEST already names {version}") if current == version else None

        return self._move_latest(version, "rollback", reason, run_id, decide)

    def _manifest_or_none(self, version: str) -> Manifest | None:
        """The manifest of the version LATEST names, or None if it cannot be read (then
        it is no reason to keep LATEST where it is)."""
        try:
            return self.manifest(version)
        except ArtifactError as err:
            log.warning("%s: LATEST names %r, which cannot be read (%s)", self.name, version, err)
            return None

    def _move_latest(
        self,
        version: str,
        action: str,
        reason: str,
        run_id: str | None,
        decide: Callable[[str | None], tuple[str, str] | None],
    ) -> PublishResult:
        """The compare-and-swap loop behind publish and rollback.

        `decide(current)` returns (why, detail) not to move (LATEST stays), or None to
        move. It is asked again after every lost race, against the value that won. The
        HISTORY.jsonl line is written by the swap itself, in the pointer's order.
        """
        key = self._key(LATEST)
        retries = self.store.config.cas_retries
        for attempt in range(retries):
            current, generation = self.backend.read_pointer(key)
            refusal = decide(current)
            if refusal:
                skipped, detail = refusal
                (log.warning if skipped == "older" else log.info)("%s: %s", self.name, detail)
                return PublishResult(False, current, detail, skipped=skipped)
            move = PointerMove(
                at=now_iso("microseconds"),
                kind=self.name,
                action=action,
                from_version=current,
                to_version=version,
                reason=reason,
                by=actor(),
                run_id=run_id,
            )
            try:
                new_generation = self.backend.swap_pointer(
                    key,
                    version,
                    generation,
                    log=(self._key(HISTORY), lambda g, move=move: replace(move, generation=g).to_json()),
                )
            except PointerConflictError:
                time.sleep(random.uniform(0, 0.01 * (attempt + 1)))  # back off, then re-read
                continue
            move = replace(move, generation=new_generation)
            log.info("%s: LATEST %s -> %s (%s)", self.name, current, version, action)
            return PublishResult(True, version, f"LATEST moved from {current} to {version}", move)
        raise PointerConflictError(
            f"{self.name}: LATEST kept changing; gave up after {retries} attempts "
            "(raise store.cas_retries if many publishers race)"
        )

    def _next_sequence(self) -> int:
        """A number larger than any this kind handed out before: the generation of the
        `.SEQUENCE` counter after a compare-and-swap bump (it never goes down)."""
        key = self._key(SEQUENCE)
        for attempt in range(max(self.store.config.cas_retries, 20) * 5):
            _, generation = self.backend.read_pointer(key)
            try:
                return self.backend.swap_pointer(key, str(generation + 1), generation)
            except PointerConflictError:
                time.sleep(random.uniform(0, 0.002 * (attempt + 1)))
        raise PointerConflictError(f"{self.name}: the commit sequence kept changing; raise store.cas_retries")
