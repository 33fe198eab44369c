"""The synthetic world's engagement model and its oracle.

`latent_score` is the engagement score z without noise (see `warehouse.synthetic`): the
ranking an ideal model would learn. `GroundTruth` reads back what generation wrote under
`warehouse/_truth/`, so later stages can measure recall against it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from warehouse.synthetic_world import LANGUAGES
from warehouse.tables import Warehouse

# Engagement model (see module docstring). Written into _truth/world.json.
ENGAGEMENT = {
    "b_affinity": 1.2,
    "b_language": 1.8,
    "b_quality": 0.5,
    "noise_sd": 0.7,
    "bias": -1.2,
    "view_threshold": 0.15,
    "long_view_threshold": 0.7,
    # Calibrated on the "small" world: ~69% views, ~36% long views, ~5% favorites,
    # ~3% shares, ~2% boosts.
    "favorite_offset": 4.0,
    "boost_offset": 5.2,
    "share_offset": 4.6,
}


def latent_score(user_interests, user_language, story_topic, story_language, story_quality, user, story) -> np.ndarray:
    """The noiseless engagement score z for (user, story) index pairs (the oracle)."""
    n_topics = user_interests.shape[1]
    affinity = user_interests[user, story_topic[story]] * n_topics
    same_language = user_language[user] == story_language[story]
    return (
        ENGAGEMENT["b_affinity"] * np.log(affinity + 0.05)
        + ENGAGEMENT["b_language"] * (same_language - 1.0)
        + ENGAGEMENT["b_quality"] * story_quality[story]
        + ENGAGEMENT["bias"]
    )


@dataclass(frozen=True)
class GroundTruth:
    """The oracle of a synthetic world, as written under `warehouse/_truth/`."""

    user_ids: np.ndarray
    user_language: np.ndarray
    user_interests: np.ndarray  # [n_users, n_topics]
    story_ids: np.ndarray
    story_topic: np.ndarray
    story_language: np.ndarray
    story_quality: np.ndarray

    @classmethod
    def load(cls, warehouse: Warehouse) -> GroundTruth:
        users = warehouse.read_parquet("_truth/users.parquet")
        stories = warehouse.read_parquet("_truth/stories.parquet")
        languages = {lang: i for i, lang in enumerate(LANGUAGES)}
        n_topics = warehouse.read_json("_truth/world.json")["n_topics"]
        return cls(
            user_ids=users["user_id"].to_numpy(zero_copy_only=False),
            user_language=np.array([languages[x] for x in users["language"].to_pylist()]),
            user_interests=np.asarray(users["interests"].combine_chunks().flatten(), dtype=np.float32).reshape(
                -1, n_topics
            ),
            story_ids=stories["story_id"].to_numpy(zero_copy_only=False),
            story_topic=stories["topic"].to_numpy(),
            story_language=np.array([languages[x] for x in stories["language"].to_pylist()]),
            story_quality=stories["quality"].to_numpy(),
        )

    def oracle_scores(self, user: np.ndarray, story: np.ndarray) -> np.ndarray:
        """Noiseless engagement scores for (user index, story index) pairs; higher is better."""
        return latent_score(
            self.user_interests,
            self.user_language,
            self.story_topic,
            self.story_language,
            self.story_quality,
            user,
            story,
        )
