"""The index tasks of ebr_story_index and ebr_user_embeddings: build -> validate -> publish.

The index builder (`index_builder.publish`) builds the HNSW index of one collection from
an embedding snapshot and validates it (counts, dimensions, no NaN, recall@10 against
exact search) before it writes a version; a failed validation raises
`IndexValidationError` and nothing is written. Here the build writes the version
without moving LATEST; the validate task checks what was stored on its own, trusting
none of the builder's figures: every checksum, the parent snapshot, and recall@10
measured again (`remeasure_recall`: the stored files loaded as the service loads them,
searched at their stored ef with queries the builder never saw, against exact search
over the parent snapshot); only then does the publish task move LATEST (its history
line says how the version was built: "full", "incremental", or "reused" when the build
task found it complete, i.e. a rerun).
"""

from __future__ import annotations

import logging
import math
import tempfile
from pathlib import Path
from typing import Any

from artifacts import COLLECTIONS as COLLECTIONS  # re-exported: the DAG modules import it from here
from artifacts import ArtifactStore, index_kind
from config import EbrConfig
from orchestration.runs import RunIdentity

log = logging.getLogger(__name__)


class IndexCheckError(RuntimeError):
    """A stored index version is not fit to publish; the message says why."""


# The builder draws its validation queries with seed 0 (`validation.probe_queries`,
# `hnsw.held_aside_queries`); the validate task draws other ones.
VALIDATE_SEED = 1
# Fresh queries are another sample: recall@10 on them may fall below the threshold by
# sampling noise alone. The task fails when it falls more than this many standard errors
# (binomial, over queries x 10 answers) below `index.min_recall_at_10`.
NOISE_SIGMAS = 3.0


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
    """Checks the stored version on its own before it is published.

    Every file against its manifest checksum, the parent snapshot against the one the
    run embedded, and recall@10 measured again (`remeasure_recall`) against
    `index.min_recall_at_10`, less the sampling noise of fresh queries (`NOISE_SIGMAS`).
    The builder's own figure is logged beside it, never relied on.
    """
    store = ArtifactStore.from_config(cfg)
    kind = store.kind(index_kind(built["collection"]))
    manifest = kind.verify(built["version"])
    parent = manifest.parents.get("embedding_snapshot")
    if parent != built["snapshot"]:
        raise IndexCheckError(
            f"{kind.name}/{built['version']} was built from snapshot {parent!r}, not this run's "
            f"{built['snapshot']!r}: clear the whole DAG run"
        )
    threshold = cfg.index.min_recall_at_10
    check = remeasure_recall(cfg, store, built["collection"], built["version"])
    floor = threshold - NOISE_SIGMAS * math.sqrt(threshold * (1 - threshold) / max(check["answers"], 1))
    builders = built["recall_at_10"] if built["recall_at_10"] is not None else manifest.metrics.get("recall_at_10")
    if check["recall_at_10"] < floor:
        raise IndexCheckError(
            f"{kind.name}/{built['version']}: recall@10 {check['recall_at_10']:.4f} on {check['queries']} fresh "
            f"queries ({check['query_source']}) at its ef {check['ef']} is below index.min_recall_at_10 "
            f"{threshold:.4f} (less {NOISE_SIGMAS:g} standard errors: {floor:.4f}; the builder measured "
            f"{builders}); not publishing: rebuild it (raise index.m, index.ef_construction or index.max_ef_search), "
            "or check the snapshot and the stored files"
        )
    log.info(
        "%s/%s verified: %d files; recall@10 %.4f on %d fresh queries at ef %d (builder: %s) >= %.4f",
        kind.name,
        built["version"],
        len(manifest.files),
        check["recall_at_10"],
        check["queries"],
        check["ef"],
        builders,
        floor,
    )
    return {
        **built,
        "files": len(manifest.files),
        "model_version": manifest.parents.get("model_version"),
        "validated_recall_at_10": round(check["recall_at_10"], 6),
    }


def remeasure_recall(cfg: EbrConfig, store: ArtifactStore, collection: str, version: str) -> dict[str, Any]:
    """recall@10 of a stored index version, measured from scratch.

    The version's files are downloaded (every checksum checked) and loaded as the service
    loads them (`index_builder.loaded_index.load_index`; each shard of a shard set, with
    the answers merged by score as the router merges them) and searched at the ef they
    will be served with; the reference is exact search over the parent snapshot. The
    queries are ones the builder never used (`VALIDATE_SEED`): for the story and creator
    indexes, user embeddings of the same model when there are any (all of them when
    there are fewer than `index.validation_queries`), otherwise perturbed stored vectors.

    Returns {"recall_at_10", "queries", "answers" (queries x k), "query_source", "ef"}.
    """
    from artifacts import USER_EMBEDDINGS, snapshot_kind
    from artifacts.embedding_snapshots import read_snapshot
    from index_builder import hnsw, validation
    from index_builder.loaded_index import load_index
    from index_builder.sharding import download_shard, shard_count

    kind = store.kind(index_kind(collection))
    manifest = kind.manifest(version)
    snap = read_snapshot(store.kind(snapshot_kind(collection)), manifest.parents["embedding_snapshot"])
    n = cfg.index.validation_queries
    probe = None
    users = store.kind(USER_EMBEDDINGS)
    if collection != "users" and users.latest() is not None:
        probe = validation.probe_queries(read_snapshot(users), snap.model_version, n, seed=VALIDATE_SEED)
    if probe is None:
        probe = hnsw.held_aside_queries(snap.vectors, min(n, len(snap)), seed=VALIDATE_SEED), "perturbed stored vectors"
    queries, source = probe
    k = min(validation.RECALL_K, len(snap))
    exact = snap.ids[hnsw.exact_top_k(snap.vectors, queries, k)]
    with tempfile.TemporaryDirectory(prefix="ebr-validate-") as tmp:
        shards = shard_count(manifest)
        folders = (
            [kind.download(version, Path(tmp))]
            if shards == 1
            else [download_shard(kind, version, shard, shards, Path(tmp)) for shard in range(shards)]
        )
        indexes = [load_index(folder, collection, verify=False) for folder in folders]  # downloads verify
        answers = [index.search(queries, k) for index in indexes]
    hits = 0
    for row, expected in enumerate(exact):
        merged = sorted((hit for answer in answers for hit in answer[row]), key=lambda hit: -hit[1])[:k]
        hits += len({item for item, _ in merged} & set(expected))
    return {
        "recall_at_10": hits / exact.size if exact.size else 1.0,
        "queries": len(queries),
        "answers": int(exact.size),
        "query_source": source,
        "ef": indexes[0].ef,
    }


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
