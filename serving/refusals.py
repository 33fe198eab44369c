"""The reloader's books of versions it will not load again and of loads that crashed.

A version that failed verification (corrupt, truncated, wrong dimension or model) is
refused for good, since versions are immutable. A load that crashed (the index process
died, e.g. SIGSEGV on a graph whose checksums are right; a MemoryError; a bug) is not the
bytes' verdict: it is counted per version and retried after a backoff that doubles
(`serving.load_retry_backoff_s`), and the version is refused after
`serving.max_load_crashes` crashes. `/v1/versions` lists both books.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from artifacts import CorruptArtifactError, IncompleteVersionError, UnknownVersionError
from serving.metrics import ServingMetrics
from serving.state import now_iso

log = logging.getLogger("serving.reloader")  # the reloader's lines, as before the split

# Errors that say the version itself is bad; versions are immutable, so retrying is pointless.
PERMANENT_ERRORS = (CorruptArtifactError, IncompleteVersionError, UnknownVersionError, ValueError)


@dataclass(frozen=True)
class Refusal:
    """A version that is not loaded again: `cause` is "verification" (its bytes are bad) or
    "crashes" (its load crashed `attempts` times)."""

    kind: str
    version: str
    reason: str
    at: str
    cause: str = "verification"
    attempts: int = 0


@dataclass
class LoadFailures:
    """Failed loads of one version that did not prove it bad (crashes, MemoryError, bugs)."""

    kind: str
    version: str
    failures: int
    last_error: str
    next_attempt_at: float  # time.monotonic()

    def describe(self) -> dict:
        return {
            "kind": self.kind,
            "version": self.version,
            "failures": self.failures,
            "last_error": self.last_error,
            "next_attempt_in_s": round(max(0.0, self.next_attempt_at - time.monotonic()), 2),
        }


class RefusalBook:
    """`refused` and `load_failures`, keyed by (kind, version), and the metrics they move."""

    def __init__(
        self,
        metrics: ServingMetrics,
        *,
        max_load_crashes: int = 3,
        load_retry_backoff_s: float = 1.0,
        load_retry_backoff_max_s: float = 60.0,
    ):
        self.metrics = metrics
        self.max_load_crashes = max_load_crashes
        self.load_retry_backoff_s = load_retry_backoff_s
        self.load_retry_backoff_max_s = load_retry_backoff_max_s
        self.refused: dict[tuple[str, str], Refusal] = {}
        self.load_failures: dict[tuple[str, str], LoadFailures] = {}

    def refuse(self, kind: str, version: str, reason: str, *, cause: str = "verification", attempts: int = 0) -> None:
        self.refused[(kind, version)] = Refusal(kind, version, reason, now_iso(), cause, attempts)
        self.metrics.refused_versions.labels(kind).set(sum(1 for r in self.refused.values() if r.kind == kind))
        log.error("refused %s/%s: %s; the current state keeps serving", kind, version, reason)

    def reject(self, kind: str, version: str, reason: str) -> None:
        """A version that cannot join the set: refused and counted as a failed reload."""
        self.refuse(kind, version, reason)
        self.metrics.reloads.labels(kind, "failure").inc()

    def backing_off(self, kind: str, version: str) -> LoadFailures | None:
        """Its crashed loads, while the backoff before its next attempt runs; else None."""
        failures = self.load_failures.get((kind, version))
        return failures if failures is not None and time.monotonic() < failures.next_attempt_at else None

    def loaded(self, kind: str, version: str) -> None:
        """It loaded: its crashes are forgotten."""
        self.load_failures.pop((kind, version), None)

    def note_crash(self, kind: str, version: str, err: Exception) -> str:
        """A load that crashed: counted; retried after a doubling backoff; refused after N.
        Returns what to say about it (the caller retries unless it is now refused)."""
        self.metrics.reloads.labels(kind, "failure").inc()
        self.metrics.load_failures.labels(kind, "crash").inc()
        failures = self.load_failures.get((kind, version))
        count = failures.failures + 1 if failures else 1
        error = f"{type(err).__name__}: {err}"
        if count >= self.max_load_crashes:
            self.load_failures.pop((kind, version), None)
            reason = (
                f"its load crashed {count} times (serving.max_load_crashes={self.max_load_crashes}), last: {error}; "
                "not tried again until the service restarts: publish a rebuilt version or roll back"
            )
            self.refuse(kind, version, reason, cause="crashes", attempts=count)
            return f"{kind}/{version} refused: {reason}"
        delay = min(self.load_retry_backoff_max_s, self.load_retry_backoff_s * 2 ** (count - 1))
        self.load_failures[(kind, version)] = LoadFailures(kind, version, count, error, time.monotonic() + delay)
        log.warning(
            "loading %s/%s failed (%d of %d crashes allowed: %s); next attempt in %.1f s",
            kind,
            version,
            count,
            self.max_load_crashes,
            error,
            delay,
        )
        return f"{kind}/{version} failed to load ({error}); attempt {count} of {self.max_load_crashes}, next in {delay:.1f} s"
