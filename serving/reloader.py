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
failed verification (corrupt, truncated, wrong dimension or model) is refused for good,
since versions are immutable; other errors (I/O, a store that is down) are retried at the
next poll. A rollback is just `LATEST` naming another version and is picked up the same way.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import numpy as np

from artifacts import ArtifactError, ArtifactStore, CorruptArtifactError, IncompleteVersionError, UnknownVersionError
from index_builder.loaded_index import LoadedIndex, load_index
from serving.searcher import IndexProcess, lower_thread_priority, start_forkserver
from serving.metrics import ServingMetrics
from serving.state import (
    INDEX_KINDS,
    OPTIONAL_INDEXES,
    STORY_INDEX,
    USER_EMBEDDINGS,
    Component,
    InconsistentVersionsError,
    ServedState,
    UserEmbeddings,
    check_consistent,
    load_user_embeddings,
    now_iso,
)

log = logging.getLogger(__name__)

REQUIRED_KINDS = (STORY_INDEX, USER_EMBEDDINGS)
ALL_KINDS = (STORY_INDEX, USER_EMBEDDINGS, *OPTIONAL_INDEXES.values())
# Searches run on a freshly loaded index before it is swapped in: the first queries pay
# for lazily initialised structures (hnswlib's visited-list pool) and cold pages.
WARMUP_QUERIES = 64
# Errors that say the version itself is bad; versions are immutable, so retrying is pointless.
PERMANENT_ERRORS = (CorruptArtifactError, IncompleteVersionError, UnknownVersionError, ValueError)


@dataclass(frozen=True)
class Refusal:
    kind: str
    version: str
    reason: str
    at: str


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
        on_swap: Callable[[ServedState | None, ServedState], None] | None = None,
    ):
        self.store = store
        self.cache_dir = Path(cache_dir)
        self.metrics = metrics
        self.poll_interval_s = poll_interval_s
        self.keep_cached_versions = keep_cached_versions
        self.searcher = searcher
        self.reload_nice = reload_nice
        self.on_swap = on_swap
        self.refused: dict[tuple[str, str], Refusal] = {}
        self.last_poll_at: str | None = None
        self.last_outcome = PollOutcome("empty", "not polled yet")
        self._state: ServedState | None = None
        self._generation = 0
        self._settled: dict[str, str | None] | None = None  # LATEST values fully handled
        self._retry = False  # set by a poll that hit a transient error
        self._retired = 0
        self._retired_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the one reference ---------------------------------------------------------------

    @property
    def state(self) -> ServedState | None:
        """The served state. Read it once per request and use only that object."""
        return self._state

    # -- the background thread -----------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        if self.searcher == "process":
            start_forkserver()  # from this thread, before the reloader lowers its priority
        self._thread = threading.Thread(target=self._run, name="ebr-reloader", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def close(self) -> None:
        """Stops polling and lets go of the served state (index processes exit with it)."""
        self.stop()
        self._state = None
        self.metrics.ready.set(0)

    def _run(self) -> None:
        if self.searcher == "process":  # inline, a slower load would hold the GIL longer
            lower_thread_priority(self.reload_nice)
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self.poll_once()
            except Exception:  # the poller must outlive any bug in one poll
                log.exception("reload poll crashed; the served state is unchanged")
                self.metrics.polls.labels("error").inc()
            self._stop.wait(max(0.0, self.poll_interval_s - (time.monotonic() - started)))

    # -- one poll ------------------------------------------------------------------------

    def poll_once(self) -> PollOutcome:
        try:
            latest = {kind: self.store.kind(kind).latest() for kind in ALL_KINDS}
        except (ArtifactError, OSError) as err:
            self.metrics.polls.labels("error").inc()
            log.warning("cannot read LATEST pointers (%s); serving the current state", err)
            return self._outcome("failed", f"cannot read LATEST: {err}")
        self.metrics.poll_succeeded()
        self.last_poll_at = now_iso()
        if latest == self._settled and all(_alive(c) for c in (self._state.components.values() if self._state else ())):
            # Nothing moved since the last decision, which stays the one /v1/versions shows.
            return PollOutcome("unchanged", self.last_outcome.detail)
        self._retry = False
        outcome = self._reconcile(latest)
        if not self._retry:
            # Handled for good; after a transient failure the next poll tries again.
            self._settled = latest
        return outcome

    def _reconcile(self, latest: dict[str, str | None]) -> PollOutcome:
        current = self._state
        missing = [kind for kind in REQUIRED_KINDS if latest[kind] is None]
        if missing:
            return self._outcome("empty", f"nothing published yet for {', '.join(missing)}")

        # Decide on the model version from the manifests alone, before loading anything big.
        try:
            models = {kind: self._model_of(kind, latest[kind]) for kind in REQUIRED_KINDS}
        except PERMANENT_ERRORS as err:
            return self._fail_required(latest, err)
        except (ArtifactError, OSError) as err:
            self._retry = True
            return self._outcome("failed", f"cannot read manifests: {err}", level=logging.WARNING)
        if models[STORY_INDEX] != models[USER_EMBEDDINGS]:
            self.metrics.waiting_for_pair.set(1)
            return self._outcome(
                "waiting",
                f"newest story index {latest[STORY_INDEX]} is from model {models[STORY_INDEX]!r} but newest "
                f"user embeddings {latest[USER_EMBEDDINGS]} are from {models[USER_EMBEDDINGS]!r}; "
                "serving the previous pair until both sides match",
            )
        self.metrics.waiting_for_pair.set(0)
        model = models[STORY_INDEX]

        components: dict[str, Component] = {}
        notes: list[str] = []
        for kind in REQUIRED_KINDS:
            component = self._component(kind, latest[kind], model, current)
            if isinstance(component, str):
                old = current.components.get(kind) if current else None
                if old is None or old.model_version != model:
                    return self._outcome("failed", component, level=logging.ERROR)
                # The served version of this side is still consistent with the other side's
                # newest one (same model): keep it, so a bad user snapshot does not hold
                # back a good index refresh (or the reverse).
                notes.append(component)
                component = old
            components[kind] = component
        stories, users = components[STORY_INDEX], components[USER_EMBEDDINGS]
        if stories.value.dim != users.value.dim:
            # Blame whichever side is new (both, if both are): the served side was fine.
            reason = (f"dimension mismatch: {STORY_INDEX}/{stories.version} has {stories.value.dim}-d vectors, "
                      f"{USER_EMBEDDINGS}/{users.version} {users.value.dim}-d")  # fmt: skip
            for component in (stories, users):
                if current is None or current.components.get(component.kind) is not component:
                    self._reject(component.kind, component.version, reason)
            return self._outcome("failed", reason, level=logging.ERROR)
        for kind in OPTIONAL_INDEXES.values():
            if latest[kind] is None:
                continue
            component = self._component(kind, latest[kind], model, current)
            if isinstance(component, Component) and component.value.dim != stories.value.dim:
                reason = f"dimension mismatch: {kind}/{component.version} has {component.value.dim}-d vectors, the pair {stories.value.dim}-d"
                self._reject(kind, component.version, reason)
                component = reason
            if isinstance(component, str):
                notes.append(component)
                old = current.components.get(kind) if current else None
                if old is not None and old.model_version == model:
                    components[kind] = old  # keep serving the previous version of this collection
                continue
            components[kind] = component
        check_consistent(components)  # guaranteed by the checks above; a bug if not

        if current is not None and components.keys() == current.components.keys() and all(
            c is current.components[k] for k, c in components.items()
        ):
            return self._outcome("unchanged", "; ".join(notes) or "serving the newest consistent set")
        self._swap(components)
        detail = f"serving model {model}: " + ", ".join(f"{k}/{c.version}" for k, c in sorted(components.items()))
        return self._outcome("swapped", detail + ("; " + "; ".join(notes) if notes else ""))

    def _component(self, kind: str, version: str, model: str, current: ServedState | None) -> Component | str:
        """The served component for `kind` at `version`: reused if served, else loaded.

        Returns a reason string instead when the version cannot be served with `model`.
        """
        old = current.components.get(kind) if current else None
        if old is not None and old.version == version and old.model_version == model and _alive(old):
            return old
        refusal = self.refused.get((kind, version))
        if refusal:
            return f"{kind}/{version} was refused: {refusal.reason}"
        try:
            model_of_version = self._model_of(kind, version)
            if model_of_version != model:
                # Not an error of the version: its collection has not caught up with the pair.
                return (f"{kind}/{version} is from model {model_of_version!r}, the served pair from "
                        f"{model!r}; not served until a matching version is published")  # fmt: skip
            started = time.perf_counter()
            value = self._load(kind, version)
            if value.model_version != model:
                raise InconsistentVersionsError(
                    f"{kind}/{version} loaded with model {value.model_version!r}, its manifest said {model!r}"
                )
            self._warm_up(value, current)
            seconds = time.perf_counter() - started
        except PERMANENT_ERRORS as err:
            self._refuse(kind, version, str(err))
            self.metrics.reloads.labels(kind, "failure").inc()
            return f"{kind}/{version} refused: {err}"
        except (ArtifactError, OSError, RuntimeError) as err:
            self._retry = True
            self.metrics.reloads.labels(kind, "failure").inc()
            log.warning("loading %s/%s failed (%s); will retry at the next poll", kind, version, err)
            return f"{kind}/{version} could not be loaded (retried at the next poll): {err}"
        self.metrics.last_reload_seconds.labels(kind).set(seconds)
        log.info("loaded %s/%s (model %s) in %.2f s", kind, version, model, seconds)
        return Component(kind, version, model, "", value)

    def _model_of(self, kind: str, version: str) -> str:
        return self.store.kind(kind).manifest(version).parents.get("model_version", "")

    def _load(self, kind: str, version: str) -> LoadedIndex | IndexProcess | UserEmbeddings:
        """Downloads (checksums verified) and loads one version into a new object."""
        directory = self.store.kind(kind).download(version, self._cache_of(kind))
        if kind == USER_EMBEDDINGS:
            return load_user_embeddings(directory)
        collection = next(name for name, k in INDEX_KINDS.items() if k == kind)
        if self.searcher == "process":
            # Loaded, checked and warmed in the child, its loading thread at our priority.
            return IndexProcess(directory, collection, load_nice=self.reload_nice)
        # download() has just checked every file's sha256; the loader still checks sizes,
        # dimension, count and that stored vectors come back as their own neighbours.
        return load_index(directory, collection, verify=False)

    def _warm_up(self, value: LoadedIndex | IndexProcess | UserEmbeddings, current: ServedState | None) -> None:
        if not isinstance(value, LoadedIndex) or value.count == 0:  # an IndexProcess warms itself
            return
        queries = None
        if current is not None and current.dim == value.dim:
            queries = current.users.vectors[:WARMUP_QUERIES]
        if queries is None or not len(queries):
            queries = np.random.default_rng(0).standard_normal((WARMUP_QUERIES, value.dim)).astype(np.float32)
            queries /= np.linalg.norm(queries, axis=1, keepdims=True)
        for query in queries:  # one at a time, as requests arrive
            value.search(query, 10)

    def _swap(self, components: dict[str, Component]) -> None:
        old = self._state
        since = now_iso()
        stamped = {
            kind: c if (old is not None and old.components.get(kind) is c)
            else Component(c.kind, c.version, c.model_version, since, c.value)
            for kind, c in components.items()
        }  # fmt: skip
        for kind, c in stamped.items():
            if c is not components[kind]:  # newly stamped: a version this swap brings in
                self.metrics.reloads.labels(kind, "success").inc()
        self._generation += 1
        new = ServedState(self._generation, MappingProxyType(stamped), since)
        self._state = new  # the swap: one reference assignment, atomic under the GIL
        self.metrics.swaps.inc()
        self.metrics.ready.set(1)
        self.metrics.show_served({k: (c.version, c.model_version, c.count, c.memory_bytes) for k, c in stamped.items()})
        if old is not None:
            self._track_retired(old)
        if self.on_swap is not None:
            self.on_swap(old, new)
        self._prune_cache(new)

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
                self._model_of(kind, latest[kind])
            except PERMANENT_ERRORS as own:
                self._refuse(kind, latest[kind], str(own))
                self.metrics.reloads.labels(kind, "failure").inc()
        return self._outcome("failed", f"cannot read a manifest: {err}", level=logging.ERROR)

    def _reject(self, kind: str, version: str, reason: str) -> None:
        """A loaded version that cannot join the set: refused and counted as a failed reload."""
        self._refuse(kind, version, reason)
        self.metrics.reloads.labels(kind, "failure").inc()

    def _refuse(self, kind: str, version: str, reason: str) -> None:
        self.refused[(kind, version)] = Refusal(kind, version, reason, now_iso())
        log.error("refused %s/%s: %s; the current state keeps serving", kind, version, reason)

    def _outcome(self, action: str, detail: str, *, level: int = logging.INFO) -> PollOutcome:
        outcome = PollOutcome(action, detail)
        if outcome != self.last_outcome:
            log.log(level, "reload %s: %s", action, detail)
        self.last_outcome = outcome
        return outcome

    # -- the local cache -----------------------------------------------------------------

    def _cache_of(self, kind: str) -> Path:
        return self.cache_dir / kind.replace("/", "__")

    def _prune_cache(self, state: ServedState) -> None:
        """Keeps the served versions and the newest `keep_cached_versions` others per kind."""
        for kind in ALL_KINDS:
            folder = self._cache_of(kind)
            if not folder.is_dir():
                continue
            served = state.components.get(kind)
            others = sorted(p for p in folder.iterdir() if p.is_dir() and (served is None or p.name != served.version))
            for stale in others[: max(0, len(others) - self.keep_cached_versions)]:
                shutil.rmtree(stale, ignore_errors=True)


def _alive(component: Component) -> bool:
    """False when the child process holding an index has died (it is then loaded again)."""
    return getattr(component.value, "alive", True)
