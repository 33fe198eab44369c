"""The two-tower model: both towers, the in-batch loss, and the learning-rate schedule."""

from __future__ import annotations

import math

import tensorflow as tf
import tensorflow_recommenders as tfrs

from config import ModelConfig
from models.loss import in_batch_loss, pointwise_loss
from models.towers import SharedEmbeddings, StoryTower, UserTower


class TwoTowerModel(tfrs.models.Model):
    """Scores a user and a story by the dot product of their L2-normalised tower outputs.

    `compute_loss` takes a batch {"user": {...}, "story": {...}, "log_q": [B], "weight": [B],
    "label": [B]}: with in-batch negatives story i is user i's positive (see `models.loss`);
    with impression negatives each row is one impression and "label" says if it was engaged.
    """

    def __init__(self, vocabularies: dict[str, list[str]], user_stats_dim: int, story_stats_dim: int, content_dim: int, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        shared = SharedEmbeddings(vocabularies, cfg)
        self.user_tower = UserTower(vocabularies, shared, user_stats_dim, cfg, name="user_tower")
        self.story_tower = StoryTower(shared, story_stats_dim, content_dim, cfg, name="story_tower")
        # SigLIP-style bias for the sigmoid loss: one positive among B-1 negatives per row.
        uses_bias = cfg.loss == "sigmoid" or cfg.negatives == "impressions"
        self.sigmoid_bias = tf.Variable(cfg.sigmoid_bias_init, trainable=uses_bias, name="sigmoid_bias")

    def compute_loss(self, inputs, training: bool = False) -> tf.Tensor:
        query = self.user_tower(inputs["user"], training=training)
        candidate = self.story_tower(inputs["story"], training=training)
        if self.cfg.negatives == "impressions":
            return pointwise_loss(
                query, candidate, inputs["label"], temperature=self.cfg.temperature,
                bias=self.sigmoid_bias, sample_weight=inputs["weight"],
            )  # fmt: skip
        return in_batch_loss(
            query,
            candidate,
            inputs["story"]["story_id"],
            temperature=self.cfg.temperature,
            loss=self.cfg.loss,
            candidate_log_q=inputs["log_q"],
            logq_strength=self.cfg.logq_strength,
            sample_weight=inputs["weight"],
            sigmoid_bias=self.sigmoid_bias,
        )


class WarmupCosine(tf.keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up to `peak` over `warmup_steps`, then cosine annealing to zero."""

    def __init__(self, peak: float, total_steps: int, warmup_steps: int):
        self.peak = peak
        self.total_steps = max(int(total_steps), 1)
        self.warmup_steps = max(int(warmup_steps), 1)

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        warm = self.peak * (step + 1.0) / self.warmup_steps
        progress = tf.clip_by_value((step - self.warmup_steps) / max(self.total_steps - self.warmup_steps, 1), 0.0, 1.0)
        cosine = 0.5 * self.peak * (1.0 + tf.cos(math.pi * progress))
        return tf.where(step < self.warmup_steps, warm, cosine)

    def get_config(self):
        return {"peak": self.peak, "total_steps": self.total_steps, "warmup_steps": self.warmup_steps}
