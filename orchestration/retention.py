"""ebr_retention: keep the newest `store.keep_versions` versions of every kind.

The artifact store keeps the newest `keep` complete versions of a kind and never deletes
the one LATEST names (`ArtifactKind.retain`). The story index and the user embeddings
also keep the pair a retrieval service would serve if it started now while their two
LATESTs come from different models (`serving_pins`): the newest consistent pair
HISTORY.jsonl names, found by the service's own rule (`serving.pairing`); it may be older
than the newest `keep` when one side has been published many times since.

Nothing else an index version needs is kept: an incremental version's files are a whole
graph (`parents.previous_index` is lineage, not a dependency), and the base a build
starts from is LATEST; if a newer publish moves LATEST mid-build and retention removes
the old base, the builder says so and builds from scratch.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

from artifacts import CREATOR_EMBEDDINGS, MODELS, STORY_EMBEDDINGS, STORY_INDEX, USER_EMBEDDINGS, ArtifactStore
from config import EbrConfig
from orchestration.indexes import COLLECTIONS, index_kind

log = logging.getLogger(__name__)

RETAINED_KINDS = (MODELS, USER_EMBEDDINGS, STORY_EMBEDDINGS, CREATOR_EMBEDDINGS, *(index_kind(c) for c in COLLECTIONS))


def serving_pins(store: ArtifactStore) -> dict[str, str]:
    """kind -> version of the pair a service falls back to when LATESTs disagree by model.

    The reloader's rule (`serving.reloader`: `_newest_consistent_pair`): among the last
    `HISTORY_DEPTH` versions each side's LATEST named that can still be read, the newest
    (story index, user embeddings) pair of one model. Empty when there is none.
    """
    from serving.loading import VersionLoader
    from serving.pairing import REQUIRED_KINDS, newest_consistent_pair
    from serving.reloader import HISTORY_DEPTH

    loader = VersionLoader(store, Path(tempfile.gettempdir()))  # reads manifests only: its cache stays unused
    candidates = {
        kind: loader.servable_moves(kind, store.kind(kind).history(), HISTORY_DEPTH, skip=()) for kind in REQUIRED_KINDS
    }
    found = newest_consistent_pair(candidates)
    return dict(found[0]) if found else {}


def serving_pin(store: ArtifactStore, kind_name: str) -> str | None:
    """The version of `kind_name` that retention keeps for a restarting service
    (`serving_pins`), or None: only the story index and the user embeddings have one.

    Every retention path calls it: the ebr_retention DAG, `ebr artifacts retain` and
    `ebr index retain`.
    """
    return serving_pins(store).get(kind_name) if kind_name in (STORY_INDEX, USER_EMBEDDINGS) else None


def retain_kind(cfg: EbrConfig, kind_name: str, *, dry_run: bool = False) -> dict[str, Any]:
    """Applies retention to one kind; returns {"kind", "kept", "deleted", "latest", "pinned"}."""
    if kind_name not in RETAINED_KINDS:
        raise ValueError(f"unknown kind {kind_name!r}: one of {', '.join(RETAINED_KINDS)}")
    store = ArtifactStore.from_config(cfg)
    kind = store.kind(kind_name)
    pin = serving_pin(store, kind_name)
    report = kind.retain(cfg.store.keep_versions, dry_run=dry_run, pinned=[pin] if pin else ())
    log.info(
        "%s: kept %d, deleted %s%s",
        kind_name,
        len(report.kept),
        report.deleted or "none",
        f" (kept {pin}: the consistent pair a restarting service serves)" if pin else "",
    )
    return {
        "kind": kind_name,
        "kept": list(report.kept),
        "deleted": list(report.deleted),
        "latest": kind.latest(),
        "pinned": pin,
    }
