"""Running a tower over features, batch by batch: a loaded one of an exported model version
(`TowerRunner`, see `models.export` for the format) or one being trained (`embed_with_tower`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import tensorflow as tf


class TowerRunner:
    """A loaded tower: features dict (numpy, as `models.features` builds them) -> embeddings."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.function = tf.saved_model.load(str(self.path)).signatures["serving_default"]
        self.inputs = dict(self.function.structured_input_signature[1])

    def __call__(self, features: dict[str, np.ndarray], batch_size: int = 4096) -> np.ndarray:
        def embed(batch: dict[str, np.ndarray]) -> np.ndarray:
            inputs = {name: tf.constant(batch[name], dtype=spec.dtype) for name, spec in self.inputs.items()}
            return self.function(**inputs)["embedding"].numpy()

        return embed_in_batches(embed, features, batch_size)


def embed_in_batches(
    embed: Callable[[dict[str, np.ndarray]], np.ndarray], features: dict[str, np.ndarray], batch_size: int = 4096
) -> np.ndarray:
    """`embed` over `features` ({name: [N, ...]}) `batch_size` rows at a time: [N, dim].

    What a loaded tower (`TowerRunner`) and a tower being trained (`models.training`) both
    run, so that no call sees more than `batch_size` rows; an empty input gives [0, 0].
    """
    n = len(next(iter(features.values())))
    parts = [embed({k: v[i : i + batch_size] for k, v in features.items()}) for i in range(0, n, batch_size)]
    return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)


def embed_with_tower(tower, features: dict[str, np.ndarray]) -> np.ndarray:
    """A tower of the model being trained over `features`, as `TowerRunner` runs an exported one."""
    return embed_in_batches(lambda batch: tower(batch, training=False).numpy(), features)
