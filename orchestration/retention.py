"""ebr_retention: keep the newest `store.keep_versions` versions of every kind.

The artifact store never deletes the version LATEST names; index collections go
through the index builder's retention, which knows what else an index needs kept.
"""

from __future__ import annotations

import logging
from typing import Any

from artifacts import CREATOR_EMBEDDINGS, MODELS, STORY_EMBEDDINGS, USER_EMBEDDINGS, ArtifactStore
from config import EbrConfig
from orchestration.indexes import COLLECTIONS, index_kind

log = logging.getLogger(__name__)

RETAINED_KINDS = (MODELS, USER_EMBEDDINGS, STORY_EMBEDDINGS, CREATOR_EMBEDDINGS, *(index_kind(c) for c in COLLECTIONS))


def retain_kind(cfg: EbrConfig, kind_name: str, *, dry_run: bool = False) -> dict[str, Any]:
    """Applies retention to one kind; returns {"kind", "kept", "deleted", "latest"}."""
    if kind_name not in RETAINED_KINDS:
        raise ValueError(f"unknown kind {kind_name!r}: one of {', '.join(RETAINED_KINDS)}")
    store = ArtifactStore.from_config(cfg)
    kind = store.kind(kind_name)
    if kind_name.startswith("indexes/"):
        from index_builder.publish import retain_indexes

        report = retain_indexes(cfg, kind_name.split("/", 1)[1], keep=cfg.store.keep_versions, dry_run=dry_run)
    else:
        report = kind.retain(cfg.store.keep_versions, dry_run=dry_run)
    log.info("%s: kept %d, deleted %s", kind_name, len(report.kept), report.deleted or "none")
    return {"kind": kind_name, "kept": list(report.kept), "deleted": list(report.deleted), "latest": kind.latest()}
