"""Choosing the epoch: validation top-100 accuracy after each epoch, best weights, early stop."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import tensorflow as tf

from config import TrainConfig
from models.evaluation import EvaluationSet, evaluate, positions
from models.examples import ExampleSource
from models.features import story_features
from models.tower_runner import embed_with_tower

log = logging.getLogger(__name__)


class EpochValidator(tf.keras.callbacks.Callback):
    """After each epoch: validation top-100 accuracy; keeps the best weights; early stop.

    An epoch that ended inside the learning-rate warm-up is recorded but never kept as the
    best (nor counted against patience): its model is an artefact of a rate still rising.
    If training stops before the warm-up ends, the last weights stay.
    """

    def __init__(
        self,
        model,
        source: ExampleSource,
        rows,
        candidates,
        as_of,
        tcfg: TrainConfig,
        logdir: Path,
        steps_per_epoch: int,
        strategy: tf.distribute.Strategy | None = None,
    ):
        super().__init__()
        self._model = model
        self.strategy = strategy
        self.rows = rows[:5000]
        self.source = source
        history = source.history
        self.patience = tcfg.patience
        self.first_eligible_epoch = tcfg.warmup_steps // max(steps_per_epoch, 1) + 1  # 1-based
        self.best, self.best_epoch, self.best_weights, self.wait = -1.0, 0, None, 0
        self.history: list[dict[str, float]] = []
        self.seconds = 0.0  # spent validating
        self.writer = tf.summary.create_file_writer(str(logdir / "validation"))
        # Each validation example is one "user" of an EvaluationSet whose one test event is
        # its story (-1, a miss, if that is not a candidate); nothing is excluded as seen.
        targets = positions(candidates, len(history.catalog.story_ids))[history.story[self.rows]]
        self.data = EvaluationSet(
            users=np.arange(len(self.rows)),
            test_events=[np.array([t]) for t in targets],
            seen=[np.zeros(0, dtype=np.int64)] * len(self.rows),
            n_candidates=len(candidates),
        )
        # Top-100 accuracy; below 100 candidates every candidate is in the top n_candidates.
        self.k = min(100, len(candidates))
        # The candidates' features are fixed for the run; only the towers change per epoch.
        self.candidate_features = story_features(history, candidates, np.full(len(candidates), as_of))

    def on_epoch_end(self, epoch, logs=None):
        started = time.perf_counter()
        users = embed_with_tower(self._model.user_tower, self.source.batch(self.rows, corpus=False)["user"])
        stories = embed_with_tower(self._model.story_tower, self.candidate_features)
        accuracy = evaluate(lambda examples: users[examples] @ stories.T, self.data, [self.k])[
            f"top_k_accuracy@{self.k}"
        ]
        if self.strategy is not None:
            # Every worker must take the same decision (keep, stop) or the collectives of
            # the next epoch wait forever: decide on the workers' mean.
            from models.distributed import mean_over_workers

            accuracy = mean_over_workers(self.strategy, accuracy)
        self.history.append(
            {"epoch": epoch + 1, "loss": float((logs or {}).get("loss", np.nan)), "val_top_100_accuracy": accuracy}
        )
        with self.writer.as_default():
            tf.summary.scalar("top_100_accuracy", accuracy, step=epoch + 1)
        log.info("epoch %d: validation top-100 accuracy %.4f", epoch + 1, accuracy)
        if epoch + 1 < self.first_eligible_epoch:
            pass  # inside the warm-up
        elif accuracy > self.best:
            self.best, self.best_epoch, self.wait = accuracy, epoch + 1, 0
            self.best_weights = self._model.get_weights()
        else:
            self.wait += 1
            if self.wait >= self.patience:
                self._model.stop_training = True
        self.seconds += time.perf_counter() - started

    def restore_best(self):
        if self.best_weights is not None:
            self._model.set_weights(self.best_weights)
        else:  # every epoch ended inside the warm-up: the last weights stay
            self.best_epoch = len(self.history)
