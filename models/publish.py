"""Publishing a model version: uploading an export (`models.export`) into the store.

In one process (`publish_model`, what `ebr train` does), or in two steps across tasks that
may run on different machines (`stage_model` then `commit_staged_model`, what the
ebr_train DAG does: the gate decides in between).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from artifacts import MODELS, ArtifactStore, PublishResult
from artifacts.manifest import FileEntry


def publish_model(
    store: ArtifactStore,
    export_dir: Path,
    version: str,
    *,
    parents: dict[str, str],
    params: dict[str, Any],
    metrics: dict[str, Any],
    reason: str,
    run_id: str | None = None,
) -> PublishResult:
    """Uploads an exported model as a version of models/two_tower and moves LATEST."""
    kind = store.kind(MODELS)
    if not kind.is_complete(version):  # the two steps the DAG's tasks take, in one process
        commit_staged_model(
            store, stage_model(store, export_dir, version, parents=parents, params=params, metrics=metrics)
        )
    return kind.publish(version, reason=reason, run_id=run_id)


def stage_model(
    store: ArtifactStore,
    export_dir: Path,
    version: str,
    *,
    parents: dict[str, str],
    params: dict[str, Any],
    metrics: dict[str, Any],
) -> dict[str, Any]:
    """Uploads an exported model into a write attempt of models/two_tower, uncommitted.

    Nothing reads a version before its manifest exists, so a staged model is invisible
    (and removed by retention after the grace period if never committed, e.g. when the
    gate refuses it). Returns what `commit_staged_model` needs, as JSON-able values: the
    training task hands it to the publish task by XCom, which may run on another machine.
    """
    writer = store.kind(MODELS).new_version(version, parents=parents, params=params)
    _add_export(writer, Path(export_dir))
    return {
        "version": version,
        "attempt": writer.attempt,
        "parents": parents,
        "params": params,
        "metrics": dict(metrics.get("model", {})),
        "files": {name: [e.size, e.sha256] for name, e in writer.files.items()},
    }


def commit_staged_model(store: ArtifactStore, staged: dict[str, Any]):
    """Commits what `stage_model` uploaded (its files' sizes are checked) and returns the
    manifest; VersionExistsError if another attempt completed the version first."""
    writer = store.kind(MODELS).new_version(
        staged["version"], parents=staged["parents"], params=staged["params"], attempt=staged["attempt"]
    )
    for name, (size, sha256) in staged["files"].items():
        writer.register(name, FileEntry(int(size), sha256))
    writer.metrics.update(staged["metrics"])
    return writer.commit()


def _add_export(writer, export_dir: Path) -> None:
    for name in ("user_tower", "story_tower"):
        writer.add_directory(name, export_dir / name)
    for name in ("vocabularies.json", "features.json", "metrics.json"):
        writer.add_file(name, export_dir / name)


def published_metrics(store: ArtifactStore) -> dict[str, Any] | None:
    kind = store.kind(MODELS)
    latest = kind.latest()
    return json.loads(kind.read_file(latest, "metrics.json")) if latest else None
