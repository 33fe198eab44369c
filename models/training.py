"""Training and evaluation: `train_and_evaluate(cfg, workdir)`.

1. Split the warehouse events: by time (the last `holdout_days` are the test set) or at
   random (`test_fraction`, numpy seed `train.seed`, as in the TFRS tutorial protocol).
2. Index the training events (`models.features.EventHistory`); the examples are the
   positive training events, each with features as of its own timestamp, built batch by
   batch while training (never all in memory). A random `validation_fraction` of them
   is held out to choose the epoch.
3. Fit the two-tower model; after each epoch measure validation top-100 accuracy, keep the
   best weights, stop after `patience` epochs without improvement.
4. Evaluate the model, popularity and implicit ALS on the same test set with the same code.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import tensorflow as tf

from config import EbrConfig, FeatureConfig, TrainConfig
from models.baselines import ImplicitALS, Popularity
from models.evaluation import EvaluationSet, evaluate, rows_by_key
from models.towers import adapt_normalization
from models.two_tower import TwoTowerModel, WarmupCosine
from models.features import (
    STORY_INPUTS,
    USER_INPUTS,
    Catalog,
    EventHistory,
    positive_scores,
    story_features,
    story_stat_names,
    user_features,
    user_stat_names,
)
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


def load_split(warehouse: Warehouse, cfg: TrainConfig) -> Split:
    """Time split: the last `holdout_days` day partitions are the test set, and training
    days are read one partition at a time. Random split: `test_fraction` of all events,
    chosen with numpy's default_rng(seed) (the TFRS-tutorial protocol)."""
    if cfg.split == "random":
        return random_split(warehouse.read_events(), cfg)
    days = warehouse.event_days()
    if len(days) <= cfg.holdout_days:
        raise ValueError(f"a time split with holdout_days={cfg.holdout_days} needs more than {len(days)} days of events")
    cutoff_day = days[-cfg.holdout_days]
    return Split(
        train_parts=lambda: (table for _, table in warehouse.iter_events(end=cutoff_day)),
        test=warehouse.read_events(start=cutoff_day),
        as_of=day_start_ts(cutoff_day),
        kind="time",
    )


def random_split(events: pa.Table, cfg: TrainConfig) -> Split:
    order = np.random.default_rng(cfg.seed).permutation(len(events))
    n_train = int(round(len(events) * (1.0 - cfg.test_fraction)))
    train, test = events.take(np.sort(order[:n_train])), events.take(np.sort(order[n_train:]))
    return Split(lambda: [train], test, int(pc.max(train["ts"]).as_py()) + 1, "random")


def build_vocabularies(catalog: Catalog, history: EventHistory, rows: np.ndarray, min_count: int) -> dict[str, list[str]]:
    """Ids seen in training examples (at least `min_count` times); the rest map to OOV."""

    def frequent(values) -> list[str]:
        counts = Counter(values)
        return sorted(v for v, c in counts.items() if c >= min_count and v != "")

    stories = history.story[rows]
    return {
        "user_id": frequent(catalog.user_ids[history.user[rows]].tolist()),
        "story_id": frequent(catalog.story_ids[stories].tolist()),
        "creator_id": frequent(catalog.story_creator[stories].tolist()),
        "hashtag": frequent(catalog.story_hashtags[stories].ravel().tolist()),
        "country": sorted(set(catalog.user_country) | set(catalog.story_country)),
        "language": sorted(set(catalog.user_language) | set(catalog.story_language)),
        "age_bucket": sorted(set(catalog.user_age_bucket)),
    }


class ExampleSource:
    """Batches of training examples, features computed on the fly (see TrainConfig.example_features)."""

    def __init__(self, history: EventHistory, rows: np.ndarray, features: FeatureConfig, split: Split, timing: str = "event"):
        self.history = history
        self.rows = rows
        self.split = split
        self.timing = timing
        counts = np.bincount(history.story[rows], minlength=len(history.catalog.story_ids))
        self.log_q = np.log(np.maximum(counts, 1) / max(len(rows), 1)).astype(np.float32)
        # Positives weigh their (capped) label score; non-engaged impressions weigh 1.
        self.weights = np.where(history.positive, np.minimum(history.score, features.max_example_weight), 1.0).astype(np.float32)
        # Snapshot timing: each user's as-of time, computed once (it scans the whole log).
        all_users = np.arange(len(history.catalog.user_ids))
        self.user_snapshot = split.user_as_of(history, all_users) if timing == "snapshot" else None

    def batch(self, rows: np.ndarray) -> dict[str, Any]:
        h = self.history
        user, story = h.user[rows], h.story[rows]
        if self.timing == "event":
            users = user_features(h, user, h.ts[rows])
            stories = story_features(h, story, h.ts[rows])
        else:
            users = leave_out(user_features(h, user, self.user_snapshot[user]), h.catalog.story_ids[story], h.cfg)
            stories = story_features(h, story, np.full(len(rows), self.split.as_of))
        return {
            "user": users,
            "story": stories,
            "log_q": self.log_q[story],
            "weight": self.weights[rows],
            "label": h.positive[rows].astype(np.float32),
        }

    def batches(self, batch_size: int, seed: int) -> Iterator[dict[str, Any]]:
        order = np.random.default_rng(seed).permutation(self.rows)
        for start in range(0, len(order) - batch_size + 1, batch_size):  # full batches only
            yield self.batch(order[start : start + batch_size])


def leave_out(users: dict[str, np.ndarray], story_ids: np.ndarray, cfg: FeatureConfig) -> dict[str, np.ndarray]:
    """Removes each row's own story (and its creator and hashtag slots) from the history."""
    hit = users["history_story_ids"] == story_ids[:, None]
    tag_hit = np.repeat(hit[:, : cfg.hashtag_history_stories], cfg.story_hashtags, axis=1)
    return {
        **users,
        "history_story_ids": np.where(hit, "", users["history_story_ids"]),
        "history_creator_ids": np.where(hit, "", users["history_creator_ids"]),
        "history_hashtags": np.where(tag_hit, "", users["history_hashtags"]),
    }


@dataclass
class TrainingResult:
    metrics: dict[str, dict[str, float]]  # "model", "popularity", "als" -> metrics
    history: list[dict[str, float]] = field(default_factory=list)  # per epoch
    best_epoch: int = 0
    examples_per_second: float = 0.0
    model: Any = None
    vocabularies: dict[str, list[str]] = field(default_factory=dict)


def train_and_evaluate(cfg: EbrConfig, workdir: Path, warehouse: Warehouse | None = None, *, baselines: bool = True, verbose: int = 1) -> TrainingResult:
    """Trains on the warehouse of `cfg` (or `warehouse`), evaluates, writes logs to `workdir`."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    # Same seed, same model: seeded initialisers, dropout and batch order, and TF kernels
    # that reduce in a fixed order.
    tf.keras.utils.set_random_seed(cfg.train.seed)
    tf.config.experimental.enable_op_determinism()
    warehouse = warehouse or Warehouse.from_config(cfg)
    fcfg, tcfg = cfg.features, cfg.train

    catalog = Catalog.from_tables(warehouse.read_table("users"), warehouse.read_table("stories"), warehouse.read_table("creators"), fcfg)
    split = load_split(warehouse, tcfg)
    history = EventHistory.from_tables(split.train_parts(), catalog, fcfg)
    positives = np.flatnonzero(history.positive)
    rng = np.random.default_rng(tcfg.seed)
    validation = rng.choice(positives, size=max(1, int(len(positives) * tcfg.validation_fraction)), replace=False)
    # In-batch negatives train on positives only; impression negatives on every impression.
    pool = positives if cfg.model.negatives == "in_batch" else np.arange(len(history.ts))
    train_rows = np.setdiff1d(pool, validation)
    source = ExampleSource(history, train_rows, fcfg, split, tcfg.example_features)
    vocabularies = build_vocabularies(catalog, history, train_rows, cfg.model.min_id_count)
    log.info("split %s: %d train events (%d examples), %d test events", split.kind, len(history.ts), len(train_rows), len(split.test))

    model = TwoTowerModel(vocabularies, len(user_stat_names(fcfg)), len(story_stat_names(fcfg)), catalog.story_content.shape[1], cfg.model)
    sample = source.batch(rng.choice(train_rows, size=min(len(train_rows), 20_000), replace=False))
    adapt_normalization(model.user_tower.stats_norm, sample["user"]["user_stats"])
    adapt_normalization(model.story_tower.stats_norm, sample["story"]["story_stats"])

    steps_per_epoch = max(len(train_rows) // tcfg.batch_size, 1)
    schedule = WarmupCosine(tcfg.learning_rate, steps_per_epoch * tcfg.epochs, steps_per_epoch * tcfg.epochs * tcfg.warmup_fraction)
    model.compile(optimizer=tf.keras.optimizers.Adam(learning_rate=schedule))

    candidates = _candidates(catalog, split)
    evaluation = _evaluation_set(catalog, history, split, candidates, tcfg, warehouse)
    signature = _output_signature(sample)
    epoch_seed = iter(range(tcfg.seed, tcfg.seed + 10_000))
    dataset = tf.data.Dataset.from_generator(
        lambda: source.batches(tcfg.batch_size, next(epoch_seed)), output_signature=signature
    ).prefetch(2)

    validator = _Validator(model, source, validation, candidates, split.as_of, tcfg, workdir / "tensorboard")
    started = time.perf_counter()
    model.fit(
        dataset,
        epochs=tcfg.epochs,
        verbose=verbose,
        callbacks=[validator, tf.keras.callbacks.TensorBoard(log_dir=str(workdir / "tensorboard"), update_freq="epoch")],
    )
    seconds = time.perf_counter() - started
    validator.restore_best()

    user_emb = _embed(model.user_tower, user_features(history, evaluation.users, split.user_as_of(history, evaluation.users)))
    story_emb = _embed(model.story_tower, story_features(history, candidates, np.full(len(candidates), split.as_of)))
    user_pos = {u: i for i, u in enumerate(evaluation.users.tolist())}
    metrics = {"model": evaluate(lambda users: user_emb[[user_pos[u] for u in users]] @ story_emb.T, evaluation, tcfg.eval_ks)}
    if baselines:
        metrics.update(_baseline_metrics(history, candidates, evaluation, tcfg))
    result = TrainingResult(
        metrics=metrics,
        history=validator.history,
        best_epoch=validator.best_epoch,
        # Training steps only: the time spent validating after each epoch is left out.
        examples_per_second=len(train_rows) * len(validator.history) / max(seconds - validator.seconds, 1e-9),
        model=model,
        vocabularies=vocabularies,
    )
    (workdir / "metrics.json").write_text(json.dumps(
        {"metrics": metrics, "history": result.history, "best_epoch": result.best_epoch,
         "examples_per_second": result.examples_per_second, "split": split.kind}, indent=2))  # fmt: skip
    return result


def _candidates(catalog: Catalog, split: Split) -> np.ndarray:
    """Every story created before the test window ends: what an index could hold then."""
    end = int(pc.max(split.test["ts"]).as_py()) + 1 if len(split.test) else split.as_of
    return np.flatnonzero(catalog.story_created_ts < end)


def _evaluation_set(catalog, history, split, candidates, tcfg, warehouse) -> EvaluationSet:
    position = np.full(len(catalog.story_ids), -1)
    position[candidates] = np.arange(len(candidates))
    test_user = catalog.user_index(split.test["user_id"].to_pylist())
    test_story = position[catalog.story_index(split.test["story_id"].to_pylist())]
    keep = (positive_scores(split.test, history.cfg) >= history.cfg.label_threshold) & (test_story >= 0)
    users = np.unique(test_user[keep])
    if len(users) > tcfg.max_eval_users:
        users = np.sort(np.random.default_rng(tcfg.seed).choice(users, tcfg.max_eval_users, replace=False))
    n_users = len(catalog.user_ids)
    test_by_user = rows_by_key(test_user[keep], n_users, test_story[keep])
    seen_pos = position[history.story]
    seen_by_user = rows_by_key(history.user[seen_pos >= 0], n_users, seen_pos[seen_pos >= 0])
    oracle = _oracle(warehouse, catalog, candidates)
    return EvaluationSet(
        users=users,
        test_events=[test_by_user[u][0] for u in users.tolist()],
        seen=[np.unique(seen_by_user[u][0]) for u in users.tolist()],
        n_candidates=len(candidates),
        match_attributes={
            "language": (catalog.user_language[users], catalog.story_language[candidates]),
            "country": (catalog.user_country[users], catalog.story_country[candidates]),
        },
        oracle=oracle,
    )


def _oracle(warehouse: Warehouse, catalog: Catalog, candidates: np.ndarray):
    try:
        from warehouse.synthetic import GroundTruth

        truth = GroundTruth.load(warehouse)
    except FileNotFoundError:
        return None  # real data: no oracle
    user_row = {u: i for i, u in enumerate(truth.user_ids.tolist())}
    story_row = np.array([{s: i for i, s in enumerate(truth.story_ids.tolist())}[s] for s in catalog.story_ids[candidates]])
    user_rows = np.array([user_row[u] for u in catalog.user_ids])

    def scores(users: np.ndarray) -> np.ndarray:
        u = np.repeat(user_rows[users], len(story_row))
        s = np.tile(story_row, len(users))
        return truth.oracle_scores(u, s).reshape(len(users), len(story_row))

    return scores


def _baseline_metrics(history: EventHistory, candidates: np.ndarray, evaluation: EvaluationSet, tcfg: TrainConfig) -> dict[str, dict[str, float]]:
    position = np.full(len(history.catalog.story_ids), -1)
    position[candidates] = np.arange(len(candidates))
    positive = history.positive & (position[history.story] >= 0)
    stories = position[history.story[positive]]
    popularity = Popularity(stories, len(candidates))
    als = ImplicitALS(factors=32, seed=tcfg.seed).fit(history.user[positive], stories, len(history.catalog.user_ids), len(candidates))
    return {"popularity": evaluate(popularity, evaluation, tcfg.eval_ks), "als": evaluate(als, evaluation, tcfg.eval_ks)}


def _embed(tower, features: dict[str, np.ndarray], batch_size: int = 4096) -> np.ndarray:
    n = len(next(iter(features.values())))
    parts = [tower({k: v[i : i + batch_size] for k, v in features.items()}, training=False).numpy() for i in range(0, n, batch_size)]
    return np.concatenate(parts) if parts else np.zeros((0, 1), np.float32)


def _output_signature(sample: dict[str, Any]):
    def spec(value: np.ndarray):
        dtype = tf.string if value.dtype == object else tf.float32
        return tf.TensorSpec(shape=(None, *value.shape[1:]), dtype=dtype)

    return {
        "user": {k: spec(sample["user"][k]) for k in USER_INPUTS},
        "story": {k: spec(sample["story"][k]) for k in STORY_INPUTS},
        "log_q": tf.TensorSpec(shape=(None,), dtype=tf.float32),
        "weight": tf.TensorSpec(shape=(None,), dtype=tf.float32),
        "label": tf.TensorSpec(shape=(None,), dtype=tf.float32),
    }


class _Validator(tf.keras.callbacks.Callback):
    """After each epoch: validation top-100 accuracy; keeps the best weights; early stop."""

    def __init__(self, model, source: ExampleSource, rows, candidates, as_of, tcfg: TrainConfig, logdir: Path):
        super().__init__()
        self._model = model
        self.rows = rows[: 5000]
        self.source = source
        history = source.history
        self.patience = tcfg.patience
        self.best, self.best_epoch, self.best_weights, self.wait = -1.0, 0, None, 0
        self.history: list[dict[str, float]] = []
        self.seconds = 0.0  # spent validating
        self.writer = tf.summary.create_file_writer(str(logdir / "validation"))
        position = np.full(len(history.catalog.story_ids), -1)
        position[candidates] = np.arange(len(candidates))
        self.targets = position[history.story[self.rows]]
        # The candidates' features are fixed for the run; only the towers change per epoch.
        self.candidate_features = story_features(history, candidates, np.full(len(candidates), as_of))

    def on_epoch_end(self, epoch, logs=None):
        started = time.perf_counter()
        users = _embed(self._model.user_tower, self.source.batch(self.rows)["user"])
        stories = _embed(self._model.story_tower, self.candidate_features)
        scores = users @ stories.T
        target_scores = scores[np.arange(len(self.rows)), self.targets]
        ranks = (scores > target_scores[:, None]).sum(axis=1)
        accuracy = float(np.mean((ranks < 100) & (self.targets >= 0)))
        self.history.append({"epoch": epoch + 1, "loss": float((logs or {}).get("loss", np.nan)), "val_top_100_accuracy": accuracy})
        with self.writer.as_default():
            tf.summary.scalar("top_100_accuracy", accuracy, step=epoch + 1)
        log.info("epoch %d: validation top-100 accuracy %.4f", epoch + 1, accuracy)
        if accuracy > self.best:
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
