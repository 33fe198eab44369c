"""Exporting the towers, the promotion gate, and publishing a model version.

A model version (`ROOT/models/two_tower/<version>/`) holds:

    user_tower/     SavedModel, signature "serving_default": raw user features -> {"embedding"}
    story_tower/    SavedModel, signature "serving_default": raw story features -> {"embedding"}
    vocabularies.json
    features.json   the FeatureConfig, the stat names in order, the content dimension
    metrics.json    model and baseline metrics on the evaluation split

Signatures take raw values: ids as strings, sequences as string matrices ("" = padding),
statistics as float32 matrices in the order `features.json` lists; they return
L2-normalised float32 [batch, output_dim]. `models.features` builds exactly these inputs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from artifacts import MODELS, ArtifactStore, PublishResult
from artifacts.manifest import FileEntry
from config import EbrConfig
from models.features import STORY_INPUTS, USER_INPUTS, story_stat_names, user_stat_names


def input_specs(cfg: EbrConfig, content_dim: int) -> dict[str, dict[str, tf.TensorSpec]]:
    f = cfg.features
    string = lambda name, *shape: tf.TensorSpec([None, *shape], tf.string, name=name)  # noqa: E731
    number = lambda name, *shape: tf.TensorSpec([None, *shape], tf.float32, name=name)  # noqa: E731
    return {
        "user": {
            "user_id": string("user_id"),
            "country": string("country"),
            "language": string("language"),
            "age_bucket": string("age_bucket"),
            "user_stats": number("user_stats", len(user_stat_names(f))),
            "history_story_ids": string("history_story_ids", f.history_length),
            "history_creator_ids": string("history_creator_ids", f.history_length),
            "history_hashtags": string("history_hashtags", f.hashtag_history_stories * f.story_hashtags),
        },
        "story": {
            "story_id": string("story_id"),
            "creator_id": string("creator_id"),
            "country": string("country"),
            "language": string("language"),
            "hashtags": string("hashtags", f.story_hashtags),
            "content_embedding": number("content_embedding", content_dim),
            "story_stats": number("story_stats", len(story_stat_names(f))),
        },
    }


def export_towers(
    model, vocabularies: dict[str, list[str]], cfg: EbrConfig, content_dim: int, metrics: dict[str, Any], dest: Path
) -> Path:
    """Writes both SavedModels and their side files into `dest`; returns `dest`."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    specs = input_specs(cfg, content_dim)
    for name, tower, keys in (
        ("user_tower", model.user_tower, USER_INPUTS),
        ("story_tower", model.story_tower, STORY_INPUTS),
    ):
        signature = _serving_function(tower, keys, [specs[name.split("_")[0]][k] for k in keys])
        tf.saved_model.save(tower, str(dest / name), signatures={"serving_default": signature})
    (dest / "vocabularies.json").write_text(json.dumps(vocabularies))
    (dest / "features.json").write_text(
        json.dumps(
            {
                "features": cfg.features.model_dump(mode="json"),
                "user_stat_names": user_stat_names(cfg.features),
                "story_stat_names": story_stat_names(cfg.features),
                "content_dim": content_dim,
                "output_dim": cfg.model.output_dim,
            },
            indent=2,
        )
    )
    (dest / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return dest


def _serving_function(tower, keys, specs):
    @tf.function(input_signature=specs)
    def serve(*inputs):
        return {"embedding": tower(dict(zip(keys, inputs, strict=True)), training=False)}

    return serve.get_concrete_function()


class TowerRunner:
    """A loaded tower: features dict (numpy, as `models.features` builds them) -> embeddings."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.function = tf.saved_model.load(str(self.path)).signatures["serving_default"]
        self.inputs = dict(self.function.structured_input_signature[1])

    def __call__(self, features: dict[str, np.ndarray], batch_size: int = 4096) -> np.ndarray:
        n = len(next(iter(features.values())))
        parts = []
        for start in range(0, n, batch_size):
            batch = {
                name: tf.constant(features[name][start : start + batch_size], dtype=spec.dtype)
                for name, spec in self.inputs.items()
            }
            parts.append(self.function(**batch)["embedding"].numpy())
        return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)


@dataclass(frozen=True)
class GateDecision:
    promote: bool
    reasons: list[str]


def promotion_gate(
    metrics: dict[str, dict[str, float]], previous: dict[str, dict[str, float]] | None, cfg: EbrConfig
) -> GateDecision:
    """Refuses a model that is worse than popularity at any depth, clearly worse than the
    published one, or measured on a test set too small to tell.

    Every metric in `gate.metrics` (recall at several depths and NDCG@10: a model whose top
    10 collapsed can still look fine at 100) is checked against the better of all-time and
    recent popularity, and against `previous`, the metrics.json of the model LATEST names
    (measured on its own evaluation split, so the tolerance `gate.max_regression` is
    deliberately loose). Each failed check is one reason.
    """
    gate, model = cfg.gate, metrics["model"]
    users, positives = int(model.get("eval_users", 0)), int(model.get("eval_positives", 0))
    if users < gate.min_eval_users or positives < gate.min_eval_positives:
        return GateDecision(
            False,
            [
                f"the test set is too small to decide: {users} users and {positives} positives "
                f"(gate.min_eval_users={gate.min_eval_users}, gate.min_eval_positives={gate.min_eval_positives}); "
                "hold out more with train.min_test_users / train.min_test_positives"
            ],
        )
    reasons = []
    for metric in gate.metrics:
        if metric not in model:
            reasons.append(f"{metric} was not measured (is its depth in train.eval_ks and within the candidates?)")
            continue
        value = model[metric]
        name, best = max(
            ((n, metrics[n][metric]) for n in POPULARITY_BASELINES if metric in metrics.get(n, {})),
            key=lambda nv: nv[1],
            default=(None, None),
        )
        if best is not None and value < best * (1.0 + gate.min_lift_over_popularity):
            reasons.append(
                f"{metric} {value:.4f} is below {name}'s {best:.4f} (floor {best * (1.0 + gate.min_lift_over_popularity):.4f})"
            )
        before = (previous or {}).get("model", {}).get(metric)
        if before is not None and value < before * (1.0 - gate.max_regression):
            reasons.append(
                f"{metric} {value:.4f} is more than {gate.max_regression:.0%} below the published model's {before:.4f}"
            )
    if reasons:
        return GateDecision(False, reasons)
    shown = ", ".join(f"{m} {model[m]:.4f}" for m in gate.metrics)
    return GateDecision(True, [f"{shown} pass on {users} users and {positives} positives"])


# The baselines the gate's "better than popularity" checks read, when measured.
POPULARITY_BASELINES = ("popularity", "recent_popularity")


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
    if not kind.is_complete(version):
        with kind.new_version(version, parents=parents, params=params) as writer:
            _add_export(writer, Path(export_dir))
            writer.metrics.update({k: v for k, v in metrics.get("model", {}).items()})
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
