"""The reloader's mechanics: download a version into the local cache (every file's size and
sha256 checked against its manifest), open it as a new object, warm it up, prune the cache.
Which versions to load, and what a failure means, is the reloader's (`serving.reloader`)."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from artifacts import ArtifactStore, CorruptArtifactError
from artifacts.manifest import Manifest
from artifacts.names import MANIFEST as MANIFEST_FILE
from index_builder.loaded_index import LoadedIndex, load_index, verify_files
from serving.searcher import IndexProcess, open_index_process, warm_up, warmup_queries
from serving.state import INDEX_KINDS, USER_EMBEDDINGS, ServedState, UserEmbeddings, load_user_embeddings

log = logging.getLogger("serving.reloader")  # the reloader's lines, as before the split

Loaded = LoadedIndex | IndexProcess | UserEmbeddings


class VersionLoader:
    """Loads versions of the served kinds from `store` through a local cache under `cache_dir`.

    searcher: "process" (an index in a child process, `IndexProcess`) or "inline"
    reload_nice: the nice increment of a load beside a served version (serving.reload_nice)
    reload_idle: such a load also in the SCHED_IDLE class (serving.reload_idle)
    """

    def __init__(
        self,
        store: ArtifactStore,
        cache_dir: Path,
        *,
        searcher: str = "process",
        reload_nice: int = 0,
        reload_idle: bool = False,
        keep_cached_versions: int = 2,
    ):
        self.store = store
        self.cache_dir = Path(cache_dir)
        self.searcher = searcher
        self.reload_nice = reload_nice
        self.reload_idle = reload_idle
        self.keep_cached_versions = keep_cached_versions
        self._models: dict[tuple[str, str], str] = {}  # (kind, version) -> model; manifests are immutable

    def model_of(self, kind: str, version: str) -> str:
        """The version's `parents.model_version` (its manifest, read once)."""
        key = (kind, version)
        if key not in self._models:  # a complete version's manifest never changes
            self._models[key] = self.store.kind(kind).manifest(version).parents.get("model_version", "")
        return self._models[key]

    def servable_moves(self, kind: str, moves, depth: int, *, skip) -> list[tuple[str, str, str]]:
        """(moved at, version, model) of the last `depth` versions that `moves` (HISTORY.jsonl's
        pointer moves, oldest first) brought to LATEST, newest first, leaving out those in
        `skip` ((kind, version) keys: refused) and those whose manifest cannot be read (deleted
        by retention, incomplete)."""
        found: list[tuple[str, str, str]] = []
        seen: set[str] = set()
        for move in reversed(moves):
            if move.to_version in seen or len(seen) >= depth:
                continue
            seen.add(move.to_version)
            if (kind, move.to_version) in skip:
                continue
            try:
                model = self.model_of(kind, move.to_version)
            except Exception:  # noqa: BLE001 - deleted by retention, incomplete: not a candidate
                continue
            found.append((move.at, move.to_version, model))
        return found

    def load(self, kind: str, version: str, *, serving: bool) -> Loaded:
        """Downloads (checksums verified) and loads one version into a new object; `serving`:
        something is served meanwhile (the load then runs at serving.reload_nice)."""
        directory = self.store.kind(kind).download(version, self.cache_of(kind))
        # Nothing served yet: no request to protect, so no reason to load at a lower priority.
        return self.open(kind, directory, beside_served=serving)

    def load_cached(self, kind: str, version: str, *, serving: bool) -> Loaded:
        """Loads a served version again from the local cache, where `download` put it with
        every sha256 checked (the manifest last); from the store only if the cache lost it."""
        directory = self.cache_of(kind) / version
        manifest_path = directory / MANIFEST_FILE
        if not manifest_path.is_file() or kind == USER_EMBEDDINGS:  # (user embeddings live in this process)
            return self.load(kind, version, serving=serving)
        try:
            verify_files(directory, Manifest.from_json(manifest_path.read_bytes(), str(manifest_path)), checksums=False)
        except CorruptArtifactError as err:  # the cache was damaged: download replaces what does not verify
            log.warning("the cached %s/%s is damaged (%s); downloading it again", kind, version, err)
            return self.load(kind, version, serving=serving)
        # At normal priority: while it loads, this index answers nothing, so the load is
        # the most urgent work of the process (serving.reload_nice is for loads beside a
        # served version; on a busy machine a niced restart took seconds longer).
        return self.open(kind, directory, beside_served=False)

    def open(self, kind: str, directory: Path, *, beside_served: bool) -> Loaded:
        if kind == USER_EMBEDDINGS:
            return load_user_embeddings(directory)
        collection = next(name for name, k in INDEX_KINDS.items() if k == kind)
        if self.searcher == "process":
            # Loaded, checked and warmed in the child (its loading thread lowered beside a served version).
            return open_index_process(
                directory, collection, beside_served=beside_served, nice=self.reload_nice, idle=self.reload_idle
            )
        # download() has just checked every file's sha256; the loader still checks sizes,
        # dimension, count and that stored vectors come back as their own neighbours.
        return load_index(directory, collection, verify=False)

    @staticmethod
    def warm_up(value: Loaded, current: ServedState | None) -> None:
        """Warms an index loaded in this process (`searcher.warm_up`) with the served users'
        vectors when their dimension matches, else random unit vectors; an IndexProcess has
        warmed itself in its child."""
        if not isinstance(value, LoadedIndex) or value.count == 0:
            return
        users = current.users.vectors if current is not None and current.dim == value.dim else None
        warm_up(value, warmup_queries(value.dim, users))

    def cache_of(self, kind: str) -> Path:
        return self.cache_dir / kind.replace("/", "__")

    def prune_cache(self, state: ServedState, kinds) -> None:
        """Keeps the served versions and the newest `keep_cached_versions` others per kind."""
        for kind in kinds:
            folder = self.cache_of(kind)
            if not folder.is_dir():
                continue
            served = state.components.get(kind)
            others = sorted(p for p in folder.iterdir() if p.is_dir() and (served is None or p.name != served.version))
            for stale in others[: max(0, len(others) - self.keep_cached_versions)]:
                shutil.rmtree(stale, ignore_errors=True)
