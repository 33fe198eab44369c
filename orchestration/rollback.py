"""ebr_rollback: move a collection's LATEST back to an earlier complete index version.

The trigger form already refuses a collection outside the list and a malformed version
name (`dag_support.rollback_params`); what a form cannot know, whether the version
exists in the store and is complete and intact, the first task checks.
"""

from __future__ import annotations

import logging
from typing import Any

from artifacts import ArtifactStore, IncompleteVersionError, UnknownVersionError
from config import EbrConfig
from orchestration.indexes import index_kind
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
        manifest = kind.verify(version)
    except (UnknownVersionError, IncompleteVersionError) as err:
        complete = kind.complete_versions()
        choices = ", ".join(reversed(complete[-10:])) or "none"
        raise RollbackRequestError(
            f"cannot roll {kind.name} back to {version!r}: {err}. Complete versions, newest first: {choices}"
        ) from None
    current = kind.latest()
    log.info("%s: LATEST %s; target %s is complete and intact (model %s)", kind.name, current, version, manifest.parents.get("model_version"))
    return {
        "collection": collection,
        "version": version,
        "current": current,
        "model_version": manifest.parents.get("model_version"),
        "reason": reason.strip(),
    }


def roll_back(cfg: EbrConfig, run: RunIdentity, request: dict[str, Any], *, force: bool = False) -> dict[str, Any]:
    """Moves LATEST to the checked version and records why. Idempotent.

    Returns {"collection", "from", "to", "moved", "detail"}.
    """
    from index_builder.publish import rollback_index

    reason = f"{request['reason']} (ebr_rollback {run.run_id})"
    result = rollback_index(cfg, request["collection"], request["version"], reason=reason, force=force, run_id=run.run_id)
    log.info("indexes/%s: %s", request["collection"], result.detail)
    return {"collection": request["collection"], "from": request["current"], "to": result.latest, "moved": result.moved, "detail": result.detail}
