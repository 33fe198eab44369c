"""ebr_rollback: move a collection's LATEST back to an earlier complete index version.

The trigger form already refuses a collection outside the list and a malformed version
name (`rollback_form`); what a form cannot know, whether the version exists in the store
and is complete and intact, the first task checks. The version is named as everywhere
else (`ArtifactKind.resolve`): `previous` (the form's default), a full name, or a unique
prefix of one; the form suggests the recent ones, listed when the DAG file is parsed.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from artifacts import PREVIOUS, AmbiguousVersionError, ArtifactStore, IncompleteVersionError, UnknownVersionError
from artifacts.names import LATEST, MANIFEST
from config import EbrConfig
from orchestration.indexes import COLLECTIONS, index_kind
from orchestration.runs import RunIdentity

log = logging.getLogger(__name__)


class RollbackRequestError(ValueError):
    """The requested rollback target cannot be used; the message lists what can."""


def check_rollback_request(cfg: EbrConfig, collection: str, version: str, reason: str) -> dict[str, Any]:
    """Checks the target exists, is complete and intact (every checksum).

    Returns {"collection", "version", "current", "model_version", "reason"}.
    """
    if not reason.strip():
        raise RollbackRequestError("a rollback needs a reason: it is recorded in HISTORY.jsonl")
    kind = ArtifactStore.from_config(cfg).kind(index_kind(collection))
    try:
        target = kind.resolve(version)
        manifest = kind.verify(target)
    except (UnknownVersionError, AmbiguousVersionError, IncompleteVersionError) as err:
        # The store's messages name the few newest complete versions (or the candidates).
        raise RollbackRequestError(f"cannot roll {kind.name} back to {version!r}: {err}") from None
    version = target
    current = kind.latest()
    log.info(
        "%s: LATEST %s; target %s is complete and intact (model %s)",
        kind.name,
        current,
        version,
        manifest.parents.get("model_version"),
    )
    return {
        "collection": collection,
        "version": version,
        "current": current,
        "model_version": manifest.parents.get("model_version"),
        "reason": reason.strip(),
    }


# Versions of each collection the trigger form suggests, newest first.
FORM_VERSIONS = 4
# Past this many version folders the form lists none (parsing must stay cheap).
FORM_LISTING_LIMIT = 200


def recent_versions(root: str, collection: str, limit: int = FORM_VERSIONS) -> tuple[list[str], str | None]:
    """The newest complete versions of indexes/<collection> (newest first) and LATEST's.

    For the trigger form, at DAG parse time, so cheap and never failing: only a local
    root is looked at (one folder listing, a stat per version, LATEST read without a
    lock; no manifest is parsed, so "newest" is by name, which starts with the run's
    UTC time: a suggestion, the check task decides). Anything else, a root on GCS
    (parsing makes no network calls), a missing folder, any error, gives nothing.
    """
    if not root.startswith("file://"):
        return [], None
    folder = Path(root.removeprefix("file://")) / index_kind(collection)
    try:
        with os.scandir(folder) as entries:
            names = [e.name for e in entries if e.is_dir() and not e.name.startswith(".")]
        if len(names) > FORM_LISTING_LIMIT:
            return [], None
        complete = sorted((n for n in names if (folder / n / MANIFEST).is_file()), reverse=True)
        latest = (folder / LATEST).read_text().strip() if (folder / LATEST).is_file() else None
    except (OSError, UnicodeDecodeError, ValueError):
        return [], None
    return complete[:limit], latest


def rollback_form(root: str) -> dict[str, Any]:
    """The trigger form of ebr_rollback, validated by JSON Schema before a run is created.

    The version field suggests (a drop-down of `examples` that still takes free text)
    `previous` and the newest complete versions under `root` when the DAG file was
    parsed, LATEST marked; the description says the same for a UI that shows no list.
    """
    from airflow.sdk import Param

    from orchestration.dag_support import VERSION_PATTERN, rollback_params

    params = rollback_params()
    suggestions, labels, described = [PREVIOUS], {PREVIOUS: f"{PREVIOUS} (the version published before LATEST's)"}, []
    for collection in COLLECTIONS:
        versions, latest = recent_versions(root, collection)
        for name in versions:
            if name not in labels:
                suggestions.append(name)
                labels[name] = name
            if name == latest:
                labels[name] += f" (LATEST of {collection})"
        if versions:
            described.append(
                f"{collection}: " + ", ".join(v + (" (LATEST)" if v == latest else "") for v in versions[:2])
            )
    recent = ("Newest when the DAG file was parsed: " + "; ".join(described) + ". ") if described else ""
    params["version"] = Param(
        PREVIOUS,
        type="string",
        pattern=VERSION_PATTERN,
        minLength=1,
        maxLength=128,
        title="Version",
        description=f"`{PREVIOUS}` (the version of indexes/<collection> published before the one LATEST names), "
        "a complete version's name, or a unique prefix of it (e.g. 20261015T00). "
        + recent
        + "`ebr index list --collection <collection>` lists them all. The first task checks the version exists and is intact.",
        examples=suggestions,
        values_display=labels,
    )
    return params


def roll_back(cfg: EbrConfig, run: RunIdentity, request: dict[str, Any], *, force: bool = False) -> dict[str, Any]:
    """Moves LATEST to the checked version and records why. Idempotent.

    Returns {"collection", "from", "to", "moved", "detail"}.
    """
    from index_builder.publish import rollback_index

    reason = f"{request['reason']} (ebr_rollback {run.run_id})"
    result = rollback_index(
        cfg, request["collection"], request["version"], reason=reason, force=force, run_id=run.run_id
    )
    log.info("indexes/%s: %s", request["collection"], result.detail)
    return {
        "collection": request["collection"],
        "from": request["current"],
        "to": result.latest,
        "moved": result.moved,
        "detail": result.detail,
    }
