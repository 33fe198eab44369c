"""Baselines the model must beat, trained on the same training events.

- Popularity: every user gets the stories with the most positive training events.
- Implicit ALS (Hu, Koren & Volinsky 2008): matrix factorisation of the user x story
  positive counts with confidence 1 + alpha * count, solved by alternating least squares.
"""

from __future__ import annotations

import numpy as np

from models.evaluation import rows_by_key


class Popularity:
    def __init__(self, story_positions: np.ndarray, n_candidates: int):
        self.counts = np.bincount(story_positions, minlength=n_candidates).astype(np.float32)

    def __call__(self, users: np.ndarray) -> np.ndarray:
        return np.broadcast_to(self.counts, (len(users), len(self.counts)))


class ImplicitALS:
    """user_factors @ item_factors.T scores; fitted by `fit`."""

    def __init__(self, factors: int = 32, regularization: float = 0.05, alpha: float = 10.0, iterations: int = 15, seed: int = 0):
        self.factors, self.regularization, self.alpha = factors, regularization, alpha
        self.iterations, self.seed = iterations, seed

    def fit(self, users: np.ndarray, items: np.ndarray, n_users: int, n_items: int) -> ImplicitALS:
        """users, items: [n] row indices of positive events (repeats add up)."""
        rng = np.random.default_rng(self.seed)
        pairs, counts = np.unique(np.stack([users, items], axis=1), axis=0, return_counts=True)
        confidence = 1.0 + self.alpha * counts
        self.user_factors = rng.normal(scale=0.01, size=(n_users, self.factors))
        self.item_factors = rng.normal(scale=0.01, size=(n_items, self.factors))
        by_user = rows_by_key(pairs[:, 0], n_users, pairs[:, 1], confidence)
        by_item = rows_by_key(pairs[:, 1], n_items, pairs[:, 0], confidence)
        for _ in range(self.iterations):
            self.user_factors = self._solve(self.item_factors, by_user)
            self.item_factors = self._solve(self.user_factors, by_item)
        return self

    def _solve(self, fixed: np.ndarray, groups) -> np.ndarray:
        gram = fixed.T @ fixed
        eye = self.regularization * np.eye(self.factors)
        out = np.zeros((len(groups), self.factors))
        for row, (others, confidence) in enumerate(groups):
            if len(others) == 0:
                continue
            y = fixed[others]
            a = gram + (y.T * (confidence - 1.0)) @ y + eye
            out[row] = np.linalg.solve(a, y.T @ confidence)
        return out

    def __call__(self, users: np.ndarray) -> np.ndarray:
        return self.user_factors[users] @ self.item_factors.T

