"""Choosing the epoch: a validation figure after each epoch, best weights, early stop.

`train.validation` says which figure: "random" (the default), top-100 accuracy over
random held-out training positives, each with its user's history up to that moment;
"time" (time split only), the recall@100 of the users of the training log's last days,
embedded as of those days' start: what the time split's test measures. On MovieLens the
first rewards predicting the next rating of a session and kept epochs whose time-split
recall was falling (issue #12; README, "Model quality").
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf

from config import EbrConfig, TrainConfig
from models.baseline_fitting import validation_split
from models.evaluation import EvaluationSet, evaluate, measure, positions
from models.examples import ExampleSource
from models.features import Catalog, EventHistory, story_features, user_features
from models.splits import Split
from models.tower_runner import embed_with_tower

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ValidationWindow:
    """`train.validation = "time"`: the last days of the training log, the users with a
    positive in them, and what the epoch is chosen on (their recall@100 with the users
    and the stories embedded as of `cutoff`, among the stories created before the window ends)."""

    cutoff: int
    data: EvaluationSet  # candidates: every catalogue story row
    eligible: np.ndarray  # [n_stories] bool: created before the window ends


def validation_window(history: EventHistory, split: Split, catalog: Catalog, cfg: EbrConfig) -> ValidationWindow | None:
    """The time split's validation window, carved as the baselines' validation split is
    (`models.baseline_fitting.validation_split`: the test window's rule and minimum sizes),
    or None, with a warning, when the training log cannot hold one.

    Raises:
      ValueError: the split is random (it has no last days).
    """
    if split.kind != "time":
        raise ValueError("train.validation = 'time' needs train.split = 'time': the random split has no last days")
    try:
        fit, data = validation_split(history, split, catalog, cfg)
    except ValueError as error:
        log.warning("train.validation = 'time': %s; the epoch is chosen on random held-out positives instead", error)
        return None
    end = int(history.ts.max()) + 1
    return ValidationWindow(fit.as_of, data, catalog.story_created_ts < end)


class EpochValidator(tf.keras.callbacks.Callback):
    """After each epoch: validation top-100 accuracy, or with a `window` its users'
    recall@100 (`train.validation = "time"`); keeps the best weights; early stop.

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
        window: ValidationWindow | None = None,
    ):
        super().__init__()
        self._model = model
        self.window = window
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

    def _top_k_accuracy(self) -> float:
        users = embed_with_tower(self._model.user_tower, self.source.batch(self.rows, corpus=False)["user"])
        stories = embed_with_tower(self._model.story_tower, self.candidate_features)
        return evaluate(lambda examples: users[examples] @ stories.T, self.data, [self.k])[f"top_k_accuracy@{self.k}"]

    def _window_recall(self) -> float:
        window, history = self.window, self.source.history
        users = window.data.users
        stories = np.arange(len(history.catalog.story_ids))
        u = embed_with_tower(self._model.user_tower, user_features(history, users, np.full(len(users), window.cutoff)))
        s = embed_with_tower(
            self._model.story_tower, story_features(history, stories, np.full(len(stories), window.cutoff))
        )
        row = positions(users, len(history.catalog.user_ids))

        def scores(batch: np.ndarray) -> np.ndarray:
            return np.where(window.eligible[np.newaxis, :], u[row[batch]] @ s.T, -np.inf)

        return float(measure(scores, window.data, [100]).metrics["recall@100"])

    @property
    def metric(self) -> str:
        """The history key of the figure the epoch is chosen on."""
        return "val_window_recall@100" if self.window is not None else "val_top_100_accuracy"

    def on_epoch_end(self, epoch, logs=None):
        started = time.perf_counter()
        accuracy = self._window_recall() if self.window is not None else self._top_k_accuracy()
        if self.strategy is not None:
            # Every worker must take the same decision (keep, stop) or the collectives of
            # the next epoch wait forever: decide on the workers' mean.
            from models.distributed import mean_over_workers

            accuracy = mean_over_workers(self.strategy, accuracy)
        self.history.append(
            {"epoch": epoch + 1, "loss": float((logs or {}).get("loss", np.nan)), self.metric: accuracy}
        )
        with self.writer.as_default():
            tf.summary.scalar(self.metric.removeprefix("val_"), accuracy, step=epoch + 1)
        log.info("epoch %d: validation %s %.4f", epoch + 1, self.metric.removeprefix("val_"), accuracy)
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
