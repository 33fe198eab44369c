"""Index versions in the artifact store: build, validate, publish, roll back, retain.

    embeddings/<collection>/<snapshot>  ──build_and_publish_index──►  indexes/<collection>/<version>
                                                                      + LATEST (compare-and-swap)

The index version is named after the snapshot it was built from, so a rerun for the
same input (a retried DAG task) finds the complete version, reuses it and only retries
the publish. Nothing is published unless the snapshot and the graph pass
`index_builder.validation`.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from artifacts import ArtifactKind, ArtifactStore, Manifest, PublishResult
from artifacts.embedding_snapshots import EmbeddingSnapshot, read_snapshot
from artifacts.errors import ArtifactError, UnknownVersionError, VersionExistsError
from artifacts.kinds import COLLECTIONS as COLLECTIONS  # re-exported: the DAG tests read it from here
from artifacts.kinds import USER_EMBEDDINGS, index_kind, snapshot_kind
from artifacts.retention import RetentionReport
from config import EbrConfig, IndexConfig
from index_builder import validation
from index_builder.builder import (
    BuiltIndex,
    PreviousIndex,
    apply_update,
    build_full,
    full_build_reason,
    plan_refusal,
    plan_update,
)
from index_builder.errors import IndexRollbackRefusedError, IndexValidationError
from index_builder.loaded_index import IDS_FILE, INDEX_FILE, SPACE, read_header, read_ids, verify_files, write_ids

log = logging.getLogger(__name__)


def index_version_name(snapshot: str) -> str:
    """The index version built from `snapshot`: the snapshot's own name.

    Snapshot names sort by time and carry the run that made them, so index versions do
    too, and the same input always maps to the same version (idempotent reruns).
    """
    return snapshot


@dataclass(frozen=True)
class IndexBuildOutcome:
    """What `build_and_publish_index` did.

    Attributes:
      collection: "stories", "creators" or "users".
      version: the index version built or reused.
      mode: "full", "incremental" or "reused" (a complete version existed already).
      published: whether LATEST moved to `version` in this call.
      detail: what was built and why, and what happened to LATEST.
      recall_at_10: the validated recall (from the manifest when reused).
      manifest: the version's manifest.
    """

    collection: str
    version: str
    mode: str
    published: bool
    detail: str
    recall_at_10: float | None
    manifest: Manifest | None


def build_and_publish_index(
    cfg: EbrConfig,
    collection: str,
    *,
    snapshot: str | None = None,
    version: str | None = None,
    run_id: str | None = None,
    full: bool = False,
    publish: bool = True,
) -> IndexBuildOutcome:
    """Builds (or reuses) the index of one snapshot, validates it and moves LATEST.

    Args:
      cfg: configuration (`index` section for the build, `store` for the artifact store).
      collection: "stories", "creators" or "users".
      snapshot: a complete version of embeddings/<collection>; default: its LATEST.
      version: index version name; default: derived from the snapshot name.
      run_id: the run this belongs to (a DAG run id), for HISTORY.jsonl.
      full: always build from scratch (no incremental update of the previous index).
      publish: move LATEST (False writes the version only).

    Raises:
      IndexValidationError: the snapshot or the built graph failed validation; nothing
        was written or published.
      UnknownVersionError / IncompleteVersionError: the snapshot does not exist or is not complete.
      VersionExistsError: `version` exists already, built from another snapshot.
    """
    store = ArtifactStore.from_config(cfg)
    kind = store.kind(index_kind(collection))
    source = store.kind(snapshot_kind(collection))
    snapshot = snapshot or source.latest()
    if snapshot is None:
        raise UnknownVersionError(
            f"{source.name} has no published snapshot (no LATEST); run the embedding dataflow first or pass --snapshot"
        )
    version = version or index_version_name(snapshot)
    shards = cfg.index.shards
    if kind.is_complete(version):
        return _reuse(kind, collection, version, snapshot, publish=publish, run_id=run_id, shards=shards)

    snap = read_snapshot(source, snapshot)
    validation.check_snapshot(snap)
    probe = _real_queries(store, collection, snap, cfg.index.validation_queries)
    with tempfile.TemporaryDirectory(prefix="ebr-index-") as workdir:
        if shards > 1:  # a shard set: one version, every shard's files in one manifest (shard_sets)
            from index_builder.shard_sets import build_shard_set, write_shard_set

            built, recall = build_shard_set(kind, snap, cfg.index, full=full, workdir=Path(workdir), probe=probe)
            write = write_shard_set
        else:
            built, recall = _build_validated(kind, snap, cfg.index, full=full, workdir=Path(workdir), probe=probe)
            write = _write_version
        try:
            manifest = write(kind, version, snap, built, recall, cfg.index, Path(workdir))
        except VersionExistsError:  # another run finished the same version meanwhile
            return _reuse(kind, collection, version, snapshot, publish=publish, run_id=run_id, shards=shards)
    detail = built.detail + f"; recall@10 {recall.recall_at_10:.4f} at ef={recall.ef}"
    if recall.ef != cfg.index.ef_search:
        detail += f" (index.ef_search={cfg.index.ef_search} gave {recall.tried[cfg.index.ef_search]:.4f}; serving with ef={recall.ef})"
    published = False
    if publish:
        result = kind.publish(version, reason=f"index of {snap.manifest.kind}/{snapshot} ({built.mode})", run_id=run_id)
        published, detail = result.moved, f"{detail}; {result.detail}"
    return IndexBuildOutcome(collection, version, built.mode, published, detail, recall.recall_at_10, manifest)


def _reuse(
    kind: ArtifactKind,
    collection: str,
    version: str,
    snapshot: str,
    *,
    publish: bool,
    run_id: str | None,
    shards: int = 1,
) -> IndexBuildOutcome:
    manifest = kind.verify(version)  # a complete version is trusted only once its bytes match
    built_from = manifest.parents.get("embedding_snapshot")
    if built_from != snapshot:
        raise VersionExistsError(
            f"{kind.name}/{version} exists already, built from snapshot {built_from!r}, not {snapshot!r}; "
            "choose another --version"
        )
    if int(manifest.params.get("shards", 1)) != shards:
        raise VersionExistsError(
            f"{kind.name}/{version} exists already as a set of {manifest.params.get('shards', 1)} shard(s), "
            f"not index.shards={shards}; choose another --version"
        )
    detail = f"{kind.name}/{version} is complete already (built from {snapshot}); reused"
    published = False
    if publish:
        result = kind.publish(
            version, reason=f"index of {snapshot} (rerun)", run_id=run_id, verify=False
        )  # verified above
        published, detail = result.moved, f"{detail}; {result.detail}"
    recall = manifest.metrics.get("recall_at_10")
    return IndexBuildOutcome(collection, version, "reused", published, detail, recall, manifest)


def _real_queries(store: ArtifactStore, collection: str, snap: EmbeddingSnapshot, n: int):
    """Same-model user embeddings as validation queries for the user-facing indexes."""
    users = store.kind(USER_EMBEDDINGS)
    if collection == "users" or users.latest() is None:
        return None
    try:
        if users.manifest(users.latest()).parents.get("model_version") != snap.model_version:
            return None
        return validation.probe_queries(read_snapshot(users), snap.model_version, n)
    except ArtifactError as err:
        log.warning("user embeddings unreadable (%s): validating with perturbed stored vectors", err)
        return None


def _build_validated(
    kind: ArtifactKind, snap: EmbeddingSnapshot, cfg: IndexConfig, *, full: bool, workdir: Path, probe=None
):
    """Incremental when possible, else full; an incremental graph that fails the recall
    gate is rebuilt from scratch before giving up."""
    where = validation.snapshot_where(snap)
    reason = "full build requested" if full else None
    if reason is None:
        latest = kind.latest()
        try:
            reason = full_build_reason(kind.manifest(latest) if latest else None, snap, cfg)
        except ArtifactError as err:
            reason = f"previous index {latest} unreadable ({err})"
    if reason is None:
        previous, reason = _open_previous(kind, latest, workdir / "previous")
    if reason is None:
        plan = plan_update(previous, snap)
        reason = plan_refusal(plan, cfg)
        if reason is None:
            built = apply_update(previous, snap, plan, cfg)
            try:
                recall = _validate(built, snap, cfg, probe)
                validation.check_recall(recall, cfg.min_recall_at_10, where)
                return built, recall
            except IndexValidationError as err:  # a fresh graph may pass where the patched one did not
                reason = f"the incremental update failed validation: {err}"
                log.warning("%s: %s; rebuilding from scratch", where, reason)
            del built
        del previous, plan  # free the previous graph before building a new one
    built = build_full(snap, cfg, reason=reason or "")
    recall = _validate(built, snap, cfg, probe)
    validation.check_recall(recall, cfg.min_recall_at_10, where)
    return built, recall


def _validate(built: BuiltIndex, snap: EmbeddingSnapshot, cfg: IndexConfig, probe=None) -> validation.RecallCheck:
    validation.check_contents(built.graph, built.labels_to_ids, built.row_labels, snap)
    return validation.measure_recall(
        built.graph,
        snap.vectors,
        built.row_labels,
        ef=cfg.ef_search,
        max_ef=max(cfg.max_ef_search, cfg.ef_search),
        threshold=cfg.min_recall_at_10,
        queries=cfg.validation_queries,
        threads=cfg.threads,
        probe=probe,
    )


def _open_previous(kind: ArtifactKind, version: str, directory: Path) -> tuple[PreviousIndex | None, str | None]:
    """An index version downloaded, verified and loaded for writing.

    Returns (previous, None), or (None, why a full build is needed instead).
    """
    import hnswlib

    try:
        local = kind.download(version, directory)  # sizes and sha256 checked
        manifest = kind.manifest(version)
        verify_files(local, manifest, checksums=False)
        graph = hnswlib.Index(space=SPACE, dim=int(manifest.params["dim"]))
        graph.load_index(str(local / INDEX_FILE), allow_replace_deleted=True)
        labels_to_ids = read_ids(local / IDS_FILE)
    except (ArtifactError, RuntimeError, KeyError, ValueError, OSError) as err:
        log.warning("%s/%s cannot be updated incrementally: %s", kind.name, version, err)
        return None, f"previous index {version} unreadable ({err})"
    if graph.element_count > len(labels_to_ids) or read_header(local / INDEX_FILE).dim != graph.dim:
        return None, f"previous index {version}: graph, id map and manifest disagree"
    return PreviousIndex(manifest, graph, labels_to_ids, index_file=local / INDEX_FILE), None


def _write_version(
    kind: ArtifactKind,
    version: str,
    snap: EmbeddingSnapshot,
    built: BuiltIndex,
    recall: validation.RecallCheck,
    cfg: IndexConfig,
    workdir: Path,
) -> Manifest:
    index_path, ids_path = workdir / INDEX_FILE, workdir / IDS_FILE
    built.graph.save_index(str(index_path))
    write_ids(ids_path, built.labels_to_ids)
    parents = {"model_version": snap.model_version, "embedding_snapshot": snap.manifest.version}
    if built.previous:
        parents["previous_index"] = built.previous
    params = {
        "space": SPACE,
        "dim": snap.dim,
        "M": cfg.m,
        "ef_construction": cfg.ef_construction,
        "ef_search": recall.ef,
        "count": len(snap),
        "mode": built.mode,
    }
    index_bytes = index_path.stat().st_size
    with kind.new_version(version, parents=parents, params=params) as writer:
        writer.add_file(INDEX_FILE, index_path)
        writer.add_file(IDS_FILE, ids_path)
        writer.metrics.update(
            {
                "recall_at_10": round(recall.recall_at_10, 6),
                "recall_at_10_by_ef": {str(ef): round(r, 6) for ef, r in recall.tried.items()},
                "validation_queries": recall.queries,
                "validation_query_source": recall.query_source,
                "validation_seconds": round(recall.seconds, 3),
                "build_seconds": round(built.build_seconds, 3),
                "vectors_per_second": round(built.touched / max(built.build_seconds, 1e-9), 1),
                "bytes_per_vector": round(index_bytes / max(len(snap), 1), 1),
                "build_detail": built.detail,
                **built.stats,
            }
        )
    return writer.manifest


def rollback_index(
    cfg: EbrConfig, collection: str, to_version: str, *, reason: str, force: bool = False, run_id: str | None = None
) -> PublishResult:
    """Moves LATEST of indexes/<collection> back to `to_version`.

    Refuses unknown or incomplete versions and versions whose checksums fail (the store
    does that), and versions built from another model than the user embeddings LATEST
    names (queries and items would come from different towers) unless `force`.

    Raises:
      IndexRollbackRefusedError: model mismatch without `force`.
      UnknownVersionError, IncompleteVersionError, CorruptArtifactError: from the store.
    """
    store = ArtifactStore.from_config(cfg)
    kind = store.kind(index_kind(collection))
    target = kind.manifest(to_version)
    target_model = target.parents.get("model_version", "")
    users = store.kind(USER_EMBEDDINGS)
    users_latest = users.latest()
    served_model = users.manifest(users_latest).parents.get("model_version", "") if users_latest else None
    if served_model is not None and target_model != served_model:
        if not force:
            raise IndexRollbackRefusedError(
                f"{kind.name}/{to_version} was built from model {target_model!r}, but {USER_EMBEDDINGS} LATEST "
                f"({users_latest}) comes from model {served_model!r}: the service would not serve the pair. "
                "Roll back the user embeddings too, or pass --force"
            )
        reason = f"{reason} [forced: index model {target_model}, user embeddings model {served_model}]"
    return kind.rollback_to(to_version, reason=reason, run_id=run_id)


def retain_indexes(
    cfg: EbrConfig, collection: str, keep: int | None = None, dry_run: bool = False, pinned: Collection[str] = ()
) -> RetentionReport:
    """Deletes all but the newest `keep` (default `store.keep_versions`) complete versions,
    never the one LATEST names nor those in `pinned` (the CLI passes the version a
    restarting service would serve: `orchestration.retention.serving_pin`)."""
    kind = ArtifactStore.from_config(cfg).kind(index_kind(collection))
    return kind.retain(cfg.store.keep_versions if keep is None else keep, dry_run=dry_run, pinned=pinned)


def describe_versions(cfg: EbrConfig, collection: str) -> list[dict]:
    """One summary per version of indexes/<collection>, oldest first (for `ebr index list`)."""
    kind = ArtifactStore.from_config(cfg).kind(index_kind(collection))
    latest = kind.latest()
    rows = []
    for info in kind.versions():
        m = info.manifest
        rows.append(
            {
                "version": info.name,
                "latest": info.name == latest,
                "complete": info.complete,
                "mode": m.params.get("mode") if m else None,
                "count": m.params.get("count") if m else None,
                "model_version": m.parents.get("model_version") if m else None,
                "embedding_snapshot": m.parents.get("embedding_snapshot") if m else None,
                "ef_search": m.params.get("ef_search") if m else None,
                "recall_at_10": m.metrics.get("recall_at_10") if m else None,
                "created_at": m.created_at if m else None,
                "bytes": m.total_bytes if m else None,
            }
        )
    return rows
