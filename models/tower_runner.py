"""A loaded tower of an exported model version (see `models.export` for the format)."""

from __future__ import annotations

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
        n = len(next(iter(features.values())))
        parts = []
        for start in range(0, n, batch_size):
            batch = {
                name: tf.constant(features[name][start : start + batch_size], dtype=spec.dtype)
                for name, spec in self.inputs.items()
            }
            parts.append(self.function(**batch)["embedding"].numpy())
        return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)
