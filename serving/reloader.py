"""Hot reload: poll LATEST, load a new consistent set beside the old one, swap one reference.

One background thread runs `Reloader.poll_once()` every `poll_interval_s`:

1. read `LATEST` of `indexes/stories`, `embeddings/users` and the optional indexes
   (`indexes/creators`, `indexes/users`);
2. read the manifests of the two required versions (cheap) and stop there if their
   `parents.model_version` differ: the old pair keeps serving until both sides match
   (DESIGN.md, "Consistency rule for serving");
3. for every part whose version changed: download it into the local cache (every file's
   size and sha256 checked against the manifest), load it into a *new* object (the index
   loader re-checks dimension, count and stored vectors), check dimension and model
   version against the rest of the set, and warm it up with a few real searches;
4. build a frozen `ServedState` from the new parts and the unchanged old ones and assign
   it to the single reference requests read. In-flight requests keep the old state until
   they return; Python frees it when the last reference goes.

Any failure leaves the served state as it was; it is logged, counted in
`ebr_serving_reloads_total{result="failure"}` and listed by `/v1/versions`. A version that
failed verification is refused for good; a load that crashed is retried with a backoff and
refused after `serving.max_load_crashes` (`serving.refusals`); store and I/O errors are
retried at the next poll. A rollback is just `LATEST` naming another version.

The parts: which versions may be served together is `serving.pairing` (pure functions);
downloading, opening and warming a version is `serving.loading`; the refusals and crashed
loads are kept by `serving.refusals`; the poll thread is `serving.poller`; this module
decides and swaps. It stays one module of about 500 lines because what remains is one
poll's decision and the swap it ends in, read best in the order they happen.

Whatever else the poll decides, it first restarts any served index process that died,
from the verified copy in the local cache (the store may have deleted the version since:
retention keeps only the newest N, and LATEST may name a newer, refused one), so a dead
searcher never outlives one poll interval plus its load time. Each kind's LATEST is read
on its own: a damaged pointer leaves that kind as served and is reported, the others move
on. While the newest pair disagrees on the model, the served pair stays, and the optional
indexes of its model still load; a replica that starts then (nothing served yet) serves
the newest consistent pair it finds in HISTORY.jsonl.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from artifacts import ArtifactError, ArtifactStore
from serving.loading import VersionLoader
from serving.metrics import ServingMetrics
from serving.pairing import REQUIRED_KINDS, choose_pair, may_keep_served, newest_consistent_pair
from serving.poller import Poller
from serving.refusals import PERMANENT_ERRORS, LoadFailures, Refusal, RefusalBook
from serving.state import (
    OPTIONAL_INDEXES,
    STORY_INDEX,
    USER_EMBEDDINGS,
    Component,
    InconsistentVersionsError,
    ServedState,
    check_consistent,
    now_iso,
)

log = logging.getLogger(__name__)

ALL_KINDS = (STORY_INDEX, USER_EMBEDDINGS, *OPTIONAL_INDEXES.values())
# Versions of a kind looked at in HISTORY.jsonl for a consistent pair (newest first).
HISTORY_DEPTH = 50


@dataclass(frozen=True)
class PollOutcome:
    """What one poll did: "unchanged", "swapped", "waiting" (for a consistent pair),
    "failed" (a part could not be loaded; the old state serves) or "empty" (nothing published)."""

    action: str
    detail: str = ""


class Reloader:
    """Owns the served state and keeps it in step with the store's LATEST pointers."""

    def __init__(
        self,
        store: ArtifactStore,
        cache_dir: Path,
        metrics: ServingMetrics,
        *,
        poll_interval_s: float = 5.0,
        keep_cached_versions: int = 2,
        searcher: str = "process",
        reload_nice: int = 0,
        reload_idle: bool = False,
        max_load_crashes: int = 3,
        load_retry_backoff_s: float = 1.0,
        load_retry_backoff_max_s: float = 60.0,
        on_swap: Callable[[ServedState | None, ServedState], None] | None = None,
    ):
        self.store = store
        self.metrics = metrics
        self.poll_interval_s = poll_interval_s
        self.searcher = searcher
        self.reload_nice = reload_nice
        self.on_swap = on_swap
        self.loader = VersionLoader(
            store,
            cache_dir,
            searcher=searcher,
            reload_nice=reload_nice,
            reload_idle=reload_idle,
            keep_cached_versions=keep_cached_versions,
        )
        self.book = RefusalBook(
            metrics,
            max_load_crashes=max_load_crashes,
            load_retry_backoff_s=load_retry_backoff_s,
            load_retry_backoff_max_s=load_retry_backoff_max_s,
        )
        self.refused: dict[tuple[str, str], Refusal] = self.book.refused  # the same dicts, for /v1/versions
        self.load_failures: dict[tuple[str, str], LoadFailures] = self.book.load_failures
        self.pointer_errors: dict[str, str] = {}  # kind -> why its LATEST could not be read
        self.last_poll_at: str | None = None
        self.last_outcome = PollOutcome("empty", "not polled yet")
        self._state: ServedState | None = None
        self._generation = 0
        self._settled: dict[str, str | None] | None = None  # LATEST values fully handled
        self._retry = False  # set by a poll that hit a transient error
        self._retired = 0
        self._retired_lock = threading.Lock()
        self._thread: Poller | None = None

    # -- the one reference ---------------------------------------------------------------

    @property
    def state(self) -> ServedState | None:
        """The served state. Read it once per request and use only that object."""
        return self._state

    # -- the background thread -----------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = Poller.begin(
            self.poll_once,
            self.poll_interval_s,
            searcher=self.searcher,
            reload_nice=self.reload_nice,
            name="ebr-reloader",
            logger=log,
            crash_message="reload poll crashed; the served state is unchanged",
            on_crash=self.metrics.polls.labels("error").inc,
        )

    def stop(self, timeout: float = 30.0) -> None:
        if self._thread is not None:
            self._thread.stop(timeout)
            self._thread = None

    def close(self) -> None:
        """Stops polling and lets go of the served state (index processes exit with it)."""
        self.stop()
        self._state = None
        self.metrics.ready.set(0)

    # -- one poll ------------------------------------------------------------------------

    def poll_once(self) -> PollOutcome:
        restarted = self._restart_dead_searchers()
        latest = self._read_pointers()
        if latest is None:
            self.metrics.polls.labels("error").inc()
            errors = "; ".join(f"{k}: {e}" for k, e in sorted(self.pointer_errors.items()))
            return self._outcome(
                "failed", f"cannot read any LATEST pointer ({errors}); serving the current state", level=logging.WARNING
            )
        self.metrics.poll_succeeded()
        self.last_poll_at = now_iso()
        decided = (latest, frozenset(self.pointer_errors))
        if (
            not restarted
            and decided == self._settled
            and all(_alive(c) for c in (self._state.components.values() if self._state else ()))
        ):
            # Nothing moved since the last decision, which stays the one /v1/versions shows.
            return PollOutcome("unchanged", self.last_outcome.detail)
        self._retry = False
        outcome = self._reconcile(latest)
        if not self._retry:
            # Handled for good; after a transient failure the next poll tries again.
            self._settled = decided
        return outcome

    def _read_pointers(self) -> dict[str, str | None] | None:
        """Every kind's LATEST, each read on its own; None when none could be read.

        A pointer that cannot be read (non-UTF-8 bytes, a store error) stands for the
        version of that kind served now: that kind stays as it is, the others move on.
        """
        current = self._state
        latest: dict[str, str | None] = {}
        errors: dict[str, str] = {}
        for kind in ALL_KINDS:
            try:
                latest[kind] = self.store.kind(kind).latest()
            except Exception as err:  # noqa: BLE001 - any failure of one pointer is that pointer's
                errors[kind] = f"{type(err).__name__}: {err}"
                served = current.components.get(kind) if current else None
                latest[kind] = served.version if served else None
        for kind in ALL_KINDS:
            if kind in errors and self.pointer_errors.get(kind) != errors[kind]:
                log.warning(
                    "cannot read %s/LATEST (%s); %s stays as served until it is readable", kind, errors[kind], kind
                )
            elif kind not in errors and kind in self.pointer_errors:
                log.info("%s/LATEST is readable again", kind)
            self.metrics.pointer_errors.labels(kind).set(1 if kind in errors else 0)
        self.pointer_errors = errors
        return None if len(errors) == len(ALL_KINDS) else latest

    def _restart_dead_searchers(self) -> bool:
        """Restarts every served index process that died, from the local cache; True if any did.

        Runs before anything else a poll does (waiting for a pair, a refused LATEST, a store
        that is down): the served versions were verified when they were downloaded, and the
        cache keeps them while they are served, so nothing but the dead process stands
        between the state and answers.
        """
        current = self._state
        if current is None:
            return False
        dead = [c for c in current.components.values() if not _alive(c)]
        if not dead:
            return False
        components = dict(current.components)
        for component in dead:
            key = (component.kind, component.version)
            if key in self.refused or self.book.backing_off(*key) is not None:
                continue  # its restarts crashed: refused, or backing off like any load
            log.warning(
                "the %s/%s index process died; restarting it from the local cache", component.kind, component.version
            )
            self.metrics.searcher_restarts.labels(component.kind).inc()
            started = time.perf_counter()
            try:
                value = self.loader.load_cached(component.kind, component.version, serving=True)
            except PERMANENT_ERRORS as err:
                self.book.reject(component.kind, component.version, f"restarting it from the cache: {err}")
                continue  # left dead: /readyz says so; the next poll may bring another version
            except Exception as err:  # noqa: BLE001 - counted as a failed load; retried with backoff
                self._note_crash(component.kind, component.version, err)
                continue
            self.metrics.last_reload_seconds.labels(component.kind).set(time.perf_counter() - started)
            self.book.loaded(component.kind, component.version)
            components[component.kind] = Component(
                component.kind, component.version, component.model_version, component.served_since, value
            )
        if all(components[c.kind] is c for c in dead):
            return False
        self._swap(components, restamp=False)
        return True

    def _reconcile(self, latest: dict[str, str | None]) -> PollOutcome:
        """Decides the pair (`serving.pairing`), loads what changed, and swaps if anything did."""
        current = self._state
        missing = [kind for kind in REQUIRED_KINDS if latest[kind] is None]
        if missing:
            why = "; ".join(
                f"{k}/LATEST unreadable: {self.pointer_errors[k]}" for k in missing if k in self.pointer_errors
            )
            return self._outcome(
                "empty", f"nothing published yet for {', '.join(missing)}" + (f" ({why})" if why else "")
            )

        # Decide on the model version from the manifests alone, before loading anything big.
        try:
            models = {kind: self.loader.model_of(kind, latest[kind]) for kind in REQUIRED_KINDS}
        except PERMANENT_ERRORS as err:
            return self._fail_required(latest, err)
        except (ArtifactError, OSError) as err:
            self._retry = True
            return self._outcome("failed", f"cannot read manifests: {err}", level=logging.WARNING)
        served = None
        if current is not None:
            served = {kind: current.components[kind].version for kind in REQUIRED_KINDS}, current.model_version
        choice = choose_pair(latest, models, served, self._newest_consistent_pair)
        self.metrics.waiting_for_pair.set(1 if choice.waiting else 0)
        if choice.pair is None:
            return self._outcome("waiting", choice.waiting)
        waiting, model = choice.waiting, choice.model
        notes = [waiting] if waiting else []
        components = self._load_set(choice.pair, model, latest, current, notes)
        if isinstance(components, PollOutcome):
            return components
        if (
            current is not None
            and components.keys() == current.components.keys()
            and all(c is current.components[k] for k, c in components.items())
        ):
            return self._outcome(
                "waiting" if waiting else "unchanged", "; ".join(notes) or "serving the newest consistent set"
            )
        self._swap(components)  # logs the versions and their counts
        detail = f"serving model {model}: " + ", ".join(f"{k}/{c.version}" for k, c in sorted(components.items()))
        return self._outcome(
            "waiting" if waiting else "swapped",
            detail + ("; " + "; ".join(notes) if notes else ""),
            level=logging.INFO if notes else logging.DEBUG,
        )

    def _load_set(
        self,
        pair: dict[str, str],
        model: str,
        latest: dict[str, str | None],
        current: ServedState | None,
        notes: list[str],
    ) -> dict[str, Component] | PollOutcome:
        """The components of the set to serve: the pair, then the optional indexes of its
        model, each reused if served, else loaded; `notes` gathers what was not served and why.
        A PollOutcome instead when the pair cannot be served (the old state stays)."""
        waiting = bool(notes)  # notes start with why the newest pair is not the one served
        components: dict[str, Component] = {}
        for kind in REQUIRED_KINDS:
            component = self._component(kind, pair[kind], model, current)
            if isinstance(component, str):
                old = current.components.get(kind) if current else None
                if old is None or not may_keep_served(old.model_version, model):
                    return self._outcome(
                        "waiting" if waiting else "failed", "; ".join([*notes, component]), level=logging.ERROR
                    )
                notes.append(component)
                component = old
            components[kind] = component
        stories, users = components[STORY_INDEX], components[USER_EMBEDDINGS]
        if stories.value.dim != users.value.dim:
            # Blame whichever side is new (both, if both are): the served side was fine.
            reason = (
                f"dimension mismatch: {STORY_INDEX}/{stories.version} has {stories.value.dim}-d vectors, "
                f"{USER_EMBEDDINGS}/{users.version} {users.value.dim}-d"
            )
            for component in (stories, users):
                if current is None or current.components.get(component.kind) is not component:
                    self.book.reject(component.kind, component.version, reason)
            return self._outcome("failed", reason, level=logging.ERROR)
        for kind in OPTIONAL_INDEXES.values():
            if latest[kind] is None:
                continue
            component = self._component(kind, latest[kind], model, current)
            if isinstance(component, Component) and component.value.dim != stories.value.dim:
                reason = f"dimension mismatch: {kind}/{component.version} has {component.value.dim}-d vectors, the pair {stories.value.dim}-d"
                self.book.reject(kind, component.version, reason)
                component = reason
            if isinstance(component, str):
                notes.append(component)
                old = current.components.get(kind) if current else None
                if old is not None and may_keep_served(old.model_version, model):
                    components[kind] = old  # keep serving the previous version of this collection
                continue
            components[kind] = component
        check_consistent(components)  # guaranteed by the checks above; a bug if not
        return components

    def _newest_consistent_pair(self) -> tuple[dict[str, str], str] | None:
        """The newest consistent pair LATEST has named (`pairing.newest_consistent_pair`),
        among the last HISTORY_DEPTH versions of each side that may still be served."""
        candidates = {}
        for kind in REQUIRED_KINDS:
            try:
                moves = self.store.kind(kind).history()
            except Exception as err:  # noqa: BLE001 - no history, no fallback
                log.warning("cannot read %s/HISTORY.jsonl (%s)", kind, err)
                return None
            candidates[kind] = self.loader.servable_moves(kind, moves, HISTORY_DEPTH, skip=self.refused)
        return newest_consistent_pair(candidates)

    def _component(self, kind: str, version: str, model: str, current: ServedState | None) -> Component | str:
        """The served component for `kind` at `version`: reused if served, else loaded.

        Returns a reason string instead when the version cannot be served with `model`.
        """
        old = current.components.get(kind) if current else None
        if old is not None and old.version == version and old.model_version == model:
            if _alive(old):
                return old
            # Its process died and the restart from the cache failed (counted there): never
            # fetched from the store again (retention may have deleted it: not its fault).
            self._retry = True
            return f"{kind}/{version} is served but its index process is down; restarted at the next poll"
        refusal = self.refused.get((kind, version))
        if refusal:
            return f"{kind}/{version} was refused: {refusal.reason}"
        failures = self.book.backing_off(kind, version)
        if failures is not None:
            self._retry = True
            return (
                f"{kind}/{version} failed to load {failures.failures} time(s), last: {failures.last_error}; "
                f"next attempt in {failures.next_attempt_at - time.monotonic():.1f} s"
            )
        try:
            model_of_version = self.loader.model_of(kind, version)
            if model_of_version != model:
                # Not an error of the version: its collection has not caught up with the pair.
                return (
                    f"{kind}/{version} is from model {model_of_version!r}, the served pair from "
                    f"{model!r}; not served until a matching version is published"
                )
            started = time.perf_counter()
            value = self.loader.load(kind, version, serving=self._state is not None)
            if value.model_version != model:
                raise InconsistentVersionsError(
                    f"{kind}/{version} loaded with model {value.model_version!r}, its manifest said {model!r}"
                )
            self.loader.warm_up(value, current)
            seconds = time.perf_counter() - started
        except PERMANENT_ERRORS as err:
            self.book.reject(kind, version, str(err))
            return f"{kind}/{version} refused: {err}"
        except (ArtifactError, OSError) as err:
            # The store or the disk, not the version: tried again at the next poll, never refused.
            self._retry = True
            self.metrics.reloads.labels(kind, "failure").inc()
            self.metrics.load_failures.labels(kind, "store").inc()
            log.warning("loading %s/%s failed (%s); will retry at the next poll", kind, version, err)
            return f"{kind}/{version} could not be loaded (retried at the next poll): {err}"
        except Exception as err:  # noqa: BLE001 - a crash, MemoryError or bug: counted, backed off
            return self._note_crash(kind, version, err)
        self.book.loaded(kind, version)
        self.metrics.last_reload_seconds.labels(kind).set(seconds)
        log.info("loaded %s/%s (model %s) in %.2f s", kind, version, model, seconds)
        return Component(kind, version, model, "", value)

    def _note_crash(self, kind: str, version: str, err: Exception) -> str:
        """A crashed load, in the book; the poll is tried again unless the version is now refused."""
        message = self.book.note_crash(kind, version, err)
        if (kind, version) not in self.refused:
            self._retry = True
        return message

    def _swap(self, components: dict[str, Component], *, restamp: bool = True) -> None:
        """Makes `components` the served state. With `restamp=False` (a restarted process of
        the same versions) the components keep their `served_since` and count no reload."""
        old = self._state
        since = now_iso()
        stamped = {
            kind: c
            if (not restamp or (old is not None and old.components.get(kind) is c))
            else Component(c.kind, c.version, c.model_version, since, c.value)
            for kind, c in components.items()
        }
        for kind, c in stamped.items():
            if c is not components[kind]:  # newly stamped: a version this swap brings in
                self.metrics.reloads.labels(kind, "success").inc()
        self._generation += 1
        new = ServedState(self._generation, MappingProxyType(stamped), since)
        self._state = new  # the swap: one reference assignment, atomic under the GIL
        if restamp:
            served = ", ".join(f"{kind}/{c.version} ({c.count:,})" for kind, c in sorted(stamped.items()))
            log.info(
                "%s state %d, model %s: %s",
                "ready: serving" if old is None else "swapped in",
                new.generation,
                new.model_version,
                served,
            )
        self.metrics.swaps.inc()
        self.metrics.ready.set(1)
        self.metrics.show_served({k: (c.version, c.model_version, c.count, c.memory_bytes) for k, c in stamped.items()})
        if old is not None:
            self._track_retired(old)
        if self.on_swap is not None:
            self.on_swap(old, new)
        self.loader.prune_cache(new, ALL_KINDS)

    def _track_retired(self, old: ServedState) -> None:
        """Counts the old state until Python frees it (after its last in-flight request)."""
        with self._retired_lock:
            self._retired += 1
            self.metrics.retired_states.set(self._retired)
        weakref.finalize(old, self._retired_freed, old.generation)

    def _retired_freed(self, generation: int) -> None:
        with self._retired_lock:
            self._retired -= 1
            self.metrics.retired_states.set(self._retired)
        log.info("state %d freed", generation)

    @property
    def retired_alive(self) -> int:
        return self._retired

    # -- failures ------------------------------------------------------------------------

    def _fail_required(self, latest: dict[str, str | None], err: Exception) -> PollOutcome:
        """A required version's manifest is unreadable: refuse whichever one it is."""
        for kind in REQUIRED_KINDS:
            try:
                self.loader.model_of(kind, latest[kind])
            except PERMANENT_ERRORS as own:
                self.book.reject(kind, latest[kind], str(own))
        return self._outcome("failed", f"cannot read a manifest: {err}", level=logging.ERROR)

    def _outcome(self, action: str, detail: str, *, level: int = logging.INFO) -> PollOutcome:
        outcome = PollOutcome(action, detail)
        if outcome != self.last_outcome:
            log.log(level, "reload %s: %s", action, detail)
        self.last_outcome = outcome
        return outcome


def _alive(component: Component) -> bool:
    """False when the child process holding an index has died (it is then loaded again)."""
    return getattr(component.value, "alive", True)
