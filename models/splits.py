"""How the warehouse events are split into training events and a test set.

By time (`load_split`: a test window at the end of the log, `choose_test_window`) or at
random (`random_split`, the TFRS tutorial protocol). `Split.user_as_of` says when each
evaluated user is embedded.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from config import FeatureConfig, TrainConfig
from models.features import EventHistory, positive_scores
from warehouse import Warehouse
from warehouse.tables import day_start_ts

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Split:
    train_parts: Callable[[], Iterable[pa.Table]]  # the training events, one table at a time
    test: pa.Table
    as_of: int  # story features for evaluation (the index snapshot) are computed as of this
    kind: str

    def user_as_of(self, history: EventHistory, users: np.ndarray) -> np.ndarray:
        """When each evaluated user's embedding is computed.

        Time split: at the cutoff, as the scheduled user dataflow would. Random split:
        there is no "now" (test events are interleaved with training ones), so each user
        is embedded just after their own last training event, as a refresh after activity
        would; taking one global time instead would put every user's recent-activity
        windows months in the past, far from anything seen in training.
        """
        if self.kind == "time":
            return np.full(len(users), self.as_of, dtype=np.int64)
        last = np.full(len(history.catalog.user_ids), -1, dtype=np.int64)
        np.maximum.at(last, history.user, history.ts)
        last = np.where(last < 0, self.as_of - 1, last)  # no training events: the global time
        return last[users] + 1


def load_split(warehouse: Warehouse, cfg: TrainConfig, features: FeatureConfig) -> Split:
    """Time split: a test window at the end of the log (see `choose_test_window`); training
    days are read one partition at a time. Random split: `test_fraction` of all events,
    chosen with numpy's default_rng(seed) (the TFRS-tutorial protocol)."""
    if cfg.split == "random":
        return random_split(warehouse.read_events(), cfg)
    days = warehouse.event_days()
    columns = ["user_id", *features.label_weights]

    def day_counts():  # newest first, read only as far back as the window needs
        for day in reversed(days):
            events = warehouse.read_events(start=day, end=day + timedelta(days=1), columns=columns)
            positive = positive_scores(events, features) >= features.label_threshold
            yield day, int(positive.sum()), set(events["user_id"].filter(pa.array(positive)).to_pylist())

    cutoff_day = choose_test_window(day_counts(), len(days), cfg)
    return Split(
        train_parts=lambda: (table for _, table in warehouse.iter_events(end=cutoff_day)),
        test=warehouse.read_events(start=cutoff_day),
        as_of=day_start_ts(cutoff_day),
        kind="time",
    )


def choose_test_window(days_newest_first: Iterable[tuple[Any, int, set]], n_days: int, cfg: TrainConfig) -> Any:
    """The first day of the time split's test window.

    `days_newest_first` yields (day, positives, users with a positive) per day partition.
    The window takes at least `holdout_days` days and grows a day at a time until it holds
    `min_test_users` users and `min_test_positives` positives; it may not take more than
    `max_holdout_fraction` of the days (the rest must be left to train on).
    """
    limit = int(n_days * cfg.max_holdout_fraction)
    if n_days < 2 or limit < min(cfg.holdout_days, n_days - 1):
        raise ValueError(
            f"a time split needs more days of events: {n_days} day(s), holdout_days={cfg.holdout_days}, max_holdout_fraction={cfg.max_holdout_fraction}"
        )
    positives, users, taken = 0, set(), 0
    for day, day_positives, day_users in days_newest_first:
        if taken >= max(limit, 1):
            break
        positives, users, taken = positives + day_positives, users | day_users, taken + 1
        if taken >= cfg.holdout_days and len(users) >= cfg.min_test_users and positives >= cfg.min_test_positives:
            log.info(
                "time split: the last %d day(s) from %s are the test set (%d users with a positive, %d positives)",
                taken,
                day,
                len(users),
                positives,
            )
            return day
    raise ValueError(
        f"a time split cannot reach train.min_test_users={cfg.min_test_users} and train.min_test_positives={cfg.min_test_positives}: "
        f"the last {taken} day(s) (max_holdout_fraction={cfg.max_holdout_fraction} of {n_days}) hold {len(users)} users and {positives} positives. "
        "Lower the minimums, allow a larger max_holdout_fraction, or use train.split=random"
    )


def random_split(events: pa.Table, cfg: TrainConfig) -> Split:
    order = np.random.default_rng(cfg.effective_split_seed).permutation(len(events))
    n_train = int(round(len(events) * (1.0 - cfg.test_fraction)))
    train, test = events.take(np.sort(order[:n_train])), events.take(np.sort(order[n_train:]))
    return Split(lambda: [train], test, int(pc.max(train["ts"]).as_py()) + 1, "random")
