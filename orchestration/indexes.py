"""The index tasks of ebr_story_index and ebr_user_embeddings: build -> validate -> publish.

The index builder (`index_builder.publish`) builds the HNSW index of one collection from
an embedding snapshot and validates it (counts, dimensions, no NaN, recall@10 against
exact search) before it writes a version; a failed validation raises
`IndexValidationError` and nothing is written. Here the build writes the version
without moving LATEST; the validate task re-reads what was stored (every checksum, the
recall figure against `index.min_recall_at_10`, the parent snapshot); only then does the
publish task move LATEST (its history line says how the version was built: "full",
"incremental", or "reused" when the build task found it complete, i.e. a rerun).
"""

from __future__ import annotations

import logging
from typing import Any

from artifacts import COLLECTIONS as COLLECTIONS  # re-exported: the DAG modules import it from here
from artifacts import ArtifactStore, index_kind
from config import EbrConfig
from orchestration.runs import RunIdentity

log = logging.getLogger(__name__)


class IndexCheckError(RuntimeError):
    """A stored index version is not fit to publish; the message says why."""


def build_index(cfg: EbrConfig, run: RunIdentity, collection: str, snapshot: str) -> dict[str, Any]:
    """Builds and validates the run's index version of `collection` (LATEST stays)."""
    from index_builder.publish import build_and_publish_index

    outcome = build_and_publish_index(
        cfg, collection, snapshot=snapshot, version=run.version, run_id=run.run_id, publish=False
    )
    log.info(
        "indexes/%s/%s: %s build, recall@10 %.4f: %s",
        collection,
        outcome.version,
        outcome.mode,
        outcome.recall_at_10,
        outcome.detail,
    )
    return {
        "collection": collection,
        "version": outcome.version,
        "snapshot": snapshot,
        "mode": outcome.mode,
        "recall_at_10": outcome.recall_at_10,
    }


def validate_index(cfg: EbrConfig, built: dict[str, Any]) -> dict[str, Any]:
    """Re-checks the stored version before it is published.

    Every file against its manifest checksum, the recall figure against the threshold,
    and the parent snapshot against the one the run embedded.
    """
    kind = ArtifactStore.from_config(cfg).kind(index_kind(built["collection"]))
    manifest = kind.verify(built["version"])
    threshold = cfg.index.min_recall_at_10
    recall = built["recall_at_10"]
    recall = float(recall if recall is not None else manifest.metrics.get("recall_at_10", -1.0))
    if recall < threshold:
        raise IndexCheckError(
            f"{kind.name}/{built['version']}: recall@10 {recall:.4f} is below index.min_recall_at_10 "
            f"{threshold:.4f}; not publishing (raise index.ef_construction or index.m, or check the snapshot)"
        )
    parent = manifest.parents.get("embedding_snapshot")
    if parent != built["snapshot"]:
        raise IndexCheckError(
            f"{kind.name}/{built['version']} was built from snapshot {parent!r}, not this run's "
            f"{built['snapshot']!r}: clear the whole DAG run"
        )
    log.info(
        "%s/%s verified: %d files, recall@10 %.4f >= %.4f",
        kind.name,
        built["version"],
        len(manifest.files),
        recall,
        threshold,
    )
    return {**built, "files": len(manifest.files), "model_version": manifest.parents.get("model_version")}


def publish_index(cfg: EbrConfig, run: RunIdentity, validated: dict[str, Any]) -> dict[str, Any]:
    """Moves the collection's LATEST to the validated version (idempotent).

    Returns {"collection", "version", "published", "latest", "detail"}.
    """
    collection, version = validated["collection"], validated["version"]
    kind = ArtifactStore.from_config(cfg).kind(index_kind(collection))
    # Published directly (checksums verified again), not through the builder, whose reuse
    # path would label the run's first publish "(rerun)".
    reason = f"index of embeddings/{collection}/{validated['snapshot']} ({validated.get('mode') or 'validated'})"
    result = kind.publish(version, reason=reason, run_id=run.run_id)
    latest = kind.latest()
    log.info("indexes/%s: %s (LATEST %s)", collection, result.detail, latest)
    return {
        "collection": collection,
        "version": version,
        "published": result.moved,
        "latest": latest,
        "detail": result.detail,
    }
