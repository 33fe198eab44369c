"""Exporting the towers: the on-disk format of a model version.

A model version (`ROOT/models/two_tower/<version>/`) holds:

    user_tower/     SavedModel, signature "serving_default": raw user features -> {"embedding"}
    story_tower/    SavedModel, signature "serving_default": raw story features -> {"embedding"}
    vocabularies.json
    features.json   the FeatureConfig, the stat names in order, the content dimension
    metrics.json    model and baseline metrics on the evaluation split

Signatures take raw values: ids as strings, sequences as string matrices ("" = padding),
statistics as float32 matrices in the order `features.json` lists; they return
L2-normalised float32 [batch, output_dim]. `models.features` builds exactly these inputs.
`models.tower_runner` loads a tower back, `models.gate` decides whether a version may be
published and `models.publish` uploads it into the store.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import tensorflow as tf

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
