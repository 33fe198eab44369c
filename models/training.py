"""Training and evaluation: `train_and_evaluate(cfg, workdir)`.

1. Split the warehouse events: by time (a test window at the end of the log, at least
   `holdout_days` long and extended until it holds `min_test_users` and
   `min_test_positives`) or at random (`test_fraction`, numpy seed `train.seed`, as in the
   TFRS tutorial protocol).
2. Index the training events (`models.features.EventHistory`); the examples are the
   positive training events, each with features as of its own timestamp, built batch by
   batch while training (never all in memory). A random `validation_fraction` of them
   is held out to choose the epoch.
3. Fit the two-tower model; after each epoch measure validation top-100 accuracy, keep the
   best weights (never those of an epoch that ended inside the warm-up), stop after
   `patience` epochs without improvement.
4. Evaluate the model and the baselines (`models.baselines`: popularity, recent
   popularity, implicit ALS, EASE or item-kNN, their hyper-parameters chosen on a
   validation split carved out of the training events) on the same test set with the
   same code, twice: over the *eligible* candidates (the stories the index would hold
   during the test window: created before its end and at most `embed.story_max_age_days`
   old at its start, what serving serves) and over the whole catalogue. Every figure comes
   with the test-set size and a bootstrap interval over users; cold-start recall (test
   positives on stories with no training event) is reported on its own.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import tensorflow as tf

from config import EbrConfig, FeatureConfig, TrainConfig
from models.baselines import (
    ALS_GRID,
    COLD_ITEM_SCORE,
    EASE,
    EASE_GRID,
    ITEM_KNN_GRID,
    ImplicitALS,
    ItemKNN,
    Popularity,
    RecentPopularity,
    WithColdUserFallback,
    choose_by_validation,
)
from models.evaluation import EvaluationSet, Scorer, measure, paired_difference, rows_by_key, summarize
from models.features import (
    SECONDS_PER_DAY,
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
from models.towers import OOV_INDEX, PAD_INDEX, adapt_normalization
from models.two_tower import TwoTowerModel, WarmupCosine
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


def build_vocabularies(
    catalog: Catalog, history: EventHistory, rows: np.ndarray, min_count: int
) -> dict[str, list[str]]:
    """Every story, creator and hashtag the warehouse knows; users with training examples.

    Stories not yet engaged with are in the vocabulary too (the export is complete); their
    rows are set to the trained out-of-vocabulary row after training (`tie_untrained_rows`),
    so a story with no training positive is scored as a fresh one is: by its content and
    creator through the OOV row that id dropout trains. Users below `min_count` training
    examples share the OOV row.
    """
    counts = Counter(catalog.user_ids[history.user[rows]].tolist())
    return {
        "user_id": sorted(v for v, c in counts.items() if c >= min_count and v != ""),
        "story_id": sorted(set(catalog.story_ids.tolist()) - {""}),
        "creator_id": sorted(set(catalog.story_creator.tolist()) - {""}),
        "hashtag": sorted(set(catalog.story_hashtags.ravel().tolist()) - {""}),
        "country": sorted(set(catalog.user_country) | set(catalog.story_country)),
        "language": sorted(set(catalog.user_language) | set(catalog.story_language)),
        "age_bucket": sorted(set(catalog.user_age_bucket)),
    }


def tie_untrained_rows(
    model: TwoTowerModel, catalog: Catalog, history: EventHistory, before: int | None = None
) -> dict[str, int]:
    """Sets the embedding rows of ids no training positive touched to the OOV row.

    Such a row got no gradient (the in-batch loss and the history sequences only reach the
    rows of engaged stories), so it still holds its random initialisation; the OOV row is
    trained by id dropout to stand for "an id the model knows nothing about". Returns how
    many rows of each table were tied. `before`: only positives before this time were
    trained on (`train.validation = "time"` holds the last days out of the examples).
    """
    trained_on = history.positive if before is None else history.positive & (history.ts < before)
    engaged = np.unique(history.story[trained_on])
    trained = {
        "story": catalog.story_ids[engaged],
        "creator": catalog.story_creator[engaged],
        "hashtag": catalog.story_hashtags[engaged].ravel(),
    }
    tied = {}
    for name, ids in trained.items():
        layer = getattr(model.user_tower.shared, name)
        table = layer.embedding.embeddings
        rows = np.zeros(int(table.shape[0]), dtype=bool)
        rows[layer.index(tf.constant(np.asarray(ids, dtype=object).astype(str))).numpy().ravel()] = True
        rows[[PAD_INDEX, OOV_INDEX]] = True  # padding and the OOV row itself stay
        values = table.numpy()
        values[~rows] = values[OOV_INDEX]
        table.assign(values)
        tied[name] = int((~rows).sum())
    return tied


class ExampleSource:
    """Batches of training examples, features computed on the fly (see TrainConfig.example_features).

    With `corpus_negatives` N > 0 each batch also carries N stories drawn uniformly from the
    stories of `corpus` created before the batch's earliest example (mixed negative
    sampling, Yang et al. 2020; the keys are TwoTowerModel's): "corpus_story" (story-tower
    inputs, [N, ...]), "corpus_log_q" ([N], log of the uniform sampling probability) and
    "corpus_unigram_log_q" ([N], the stories' in-batch log q, as "log_q").
    """

    def __init__(
        self,
        history: EventHistory,
        rows: np.ndarray,
        features: FeatureConfig,
        split: Split,
        timing: str = "event",
        *,
        corpus: np.ndarray | None = None,
        corpus_negatives: int = 0,
        seed: int = 0,
    ):
        self.history = history
        self.rows = rows
        self.split = split
        self.timing = timing
        counts = np.bincount(history.story[rows], minlength=len(history.catalog.story_ids))
        self.log_q = np.log(np.maximum(counts, 1) / max(len(rows), 1)).astype(np.float32)
        # Positives weigh their (capped) label score; non-engaged impressions weigh 1.
        self.weights = np.where(history.positive, np.minimum(history.score, features.max_example_weight), 1.0).astype(
            np.float32
        )
        # Snapshot timing: each user's as-of time, computed once (it scans the whole log).
        all_users = np.arange(len(history.catalog.user_ids))
        self.user_snapshot = split.user_as_of(history, all_users) if timing == "snapshot" else None
        # The corpus sorted by creation time: a batch samples among the stories that
        # existed at its earliest example.
        corpus = np.asarray(corpus if corpus is not None else [], dtype=np.int64)
        self.corpus = corpus[np.argsort(history.catalog.story_created_ts[corpus], kind="stable")]
        self.corpus_created = history.catalog.story_created_ts[self.corpus]
        self.corpus_negatives = corpus_negatives if len(self.corpus) else 0
        self.rng = np.random.default_rng(seed)

    def batch(self, rows: np.ndarray, *, corpus: bool = True) -> dict[str, Any]:
        h = self.history
        user, story = h.user[rows], h.story[rows]
        if self.timing == "event":
            users = user_features(h, user, h.ts[rows])
            stories = story_features(h, story, h.ts[rows])
        else:
            users = leave_out(user_features(h, user, self.user_snapshot[user]), h.catalog.story_ids[story], h.cfg)
            stories = story_features(h, story, np.full(len(rows), self.split.as_of))
        batch = {
            "user": users,
            "story": stories,
            "log_q": self.log_q[story],
            "weight": self.weights[rows],
            "label": h.positive[rows].astype(np.float32),
        }
        if self.corpus_negatives and corpus:
            # As of the batch's earliest example (the snapshot time in snapshot timing), so
            # no row's negatives come from its future.
            as_of = self.split.as_of if self.timing == "snapshot" else int(h.ts[rows].min())
            existing = max(int(np.searchsorted(self.corpus_created, as_of)), 1)
            sampled = self.corpus[self.rng.integers(0, existing, self.corpus_negatives)]
            batch["corpus_story"] = story_features(h, sampled, np.full(len(sampled), as_of))
            batch["corpus_log_q"] = np.full(len(sampled), -np.log(existing), dtype=np.float32)
            batch["corpus_unigram_log_q"] = self.log_q[sampled]
        return batch

    def batches(self, batch_size: int, seed: int) -> Iterator[dict[str, Any]]:
        for rows in self.batch_rows(batch_size, seed):
            yield self.batch(rows)

    def batch_rows(self, batch_size: int, seed: int) -> Iterator[np.ndarray]:
        """One epoch's batches as example rows: a permutation by `seed`, full batches only."""
        order = np.random.default_rng(seed).permutation(self.rows)
        for start in range(0, len(order) - batch_size + 1, batch_size):
            yield order[start : start + batch_size]


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
    # "model" and each baseline -> metrics over the eligible candidates, with sizes, 95%
    # bootstrap intervals (<metric>_lo/_hi) and the whole-catalogue figures (catalogue_*).
    metrics: dict[str, dict[str, float]]
    history: list[dict[str, float]] = field(default_factory=list)  # per epoch
    best_epoch: int = 0
    examples_per_second: float = 0.0
    model: Any = None
    vocabularies: dict[str, list[str]] = field(default_factory=dict)
    # baseline -> metric -> paired difference model - baseline (see evaluation.paired_difference)
    comparisons: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    # baseline -> the chosen hyper-parameters and every validation trial
    baseline_choices: dict[str, dict[str, Any]] = field(default_factory=dict)
    split: dict[str, Any] = field(default_factory=dict)  # what was held out, and the candidates


# The per-user metrics model and baselines are compared on (paired bootstrap).
COMPARED = ("recall@10", "recall@100", "recall@500", "ndcg@10")


def train_and_evaluate(
    cfg: EbrConfig,
    workdir: Path,
    warehouse: Warehouse | None = None,
    *,
    baselines: bool = True,
    verbose: int = 1,
    strategy: tf.distribute.Strategy | None = None,
) -> TrainingResult:
    """Trains on the warehouse of `cfg` (or `warehouse`), evaluates, writes logs to `workdir`.

    `strategy`: a `tf.distribute.MultiWorkerMirroredStrategy` when this process is one
    worker of a distributed run (`models.distributed`): every worker runs this function
    on the same data; each trains on its slice of every global batch and the validation
    decisions are taken on figures averaged over the workers, so all stop at the same
    epoch with the same weights.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    # Same seed, same model: seeded initialisers, dropout and batch order, and TF kernels
    # that reduce in a fixed order.
    tf.keras.utils.set_random_seed(cfg.train.seed)
    tf.config.experimental.enable_op_determinism()
    warehouse = warehouse or Warehouse.from_config(cfg)
    fcfg, tcfg = cfg.features, cfg.train
    ks = evaluation_ks(cfg)

    catalog = Catalog.from_tables(
        warehouse.read_table("users"), warehouse.read_table("stories"), warehouse.read_table("creators"), fcfg
    )
    split = load_split(warehouse, tcfg, fcfg)
    history = EventHistory.from_tables(split.train_parts(), catalog, fcfg)
    positives = np.flatnonzero(history.positive)
    if len(positives) < 2:
        raise ValueError(
            f"the training events hold {len(positives)} positive(s) under features.label_weights={dict(fcfg.label_weights)}: nothing to train on"
        )
    rng = np.random.default_rng(tcfg.seed)
    validation = rng.choice(positives, size=max(1, int(len(positives) * tcfg.validation_fraction)), replace=False)
    # In-batch negatives train on positives only; impression negatives on every impression.
    pool = positives if cfg.model.negatives == "in_batch" else np.arange(len(history.ts))
    window = _validation_window(history, split, catalog, cfg) if tcfg.validation == "time" else None
    if window is not None:
        # The window's events are no training examples; they still feed the features (as
        # of their own times, so of no example before them).
        validation = np.flatnonzero(history.positive & (history.ts >= window.cutoff))
        pool = pool[history.ts[pool] < window.cutoff]
    train_rows = np.setdiff1d(pool, validation)
    source = ExampleSource(
        history,
        train_rows,
        fcfg,
        split,
        tcfg.example_features,
        corpus=np.unique(history.story),
        corpus_negatives=cfg.model.corpus_negatives,
        seed=tcfg.seed,
    )
    vocabularies = build_vocabularies(catalog, history, train_rows, cfg.model.min_id_count)
    log.info(
        "split %s: %d train events (%d examples), %d test events",
        split.kind,
        len(history.ts),
        len(train_rows),
        len(split.test),
    )

    replicas = strategy.num_replicas_in_sync if strategy is not None else 1
    if tcfg.batch_size % replicas:
        raise ValueError(
            f"train.batch_size = {tcfg.batch_size} does not split evenly over {replicas} workers: make it a multiple of {replicas}"
        )
    if replicas > 1 and cfg.model.corpus_negatives:
        raise ValueError(
            f"model.corpus_negatives = {cfg.model.corpus_negatives} is not supported with {replicas} workers yet: set it to 0"
        )
    with strategy.scope() if strategy is not None else contextlib.nullcontext():
        model = TwoTowerModel(
            vocabularies,
            len(user_stat_names(fcfg)),
            len(story_stat_names(fcfg)),
            catalog.story_content.shape[1],
            cfg.model,
        )
        sample = source.batch(rng.choice(train_rows, size=min(len(train_rows), 20_000), replace=False))
        adapt_normalization(model.user_tower.stats_norm, sample["user"]["user_stats"])
        adapt_normalization(model.story_tower.stats_norm, sample["story"]["story_stats"])
        schedule = WarmupCosine(
            tcfg.learning_rate, tcfg.decay_steps, tcfg.warmup_steps, floor=tcfg.min_learning_rate_ratio
        )
        model.compile(optimizer=tf.keras.optimizers.Adam(learning_rate=schedule))
    steps_per_epoch = max(len(train_rows) // tcfg.batch_size, 1)

    candidates = CandidateSets.at(catalog, history, split, cfg.embed.story_max_age_days)
    evaluation = _evaluation_sets(catalog, history, split, candidates, tcfg, warehouse)
    signature = _output_signature(source.batch(train_rows[: tcfg.batch_size]))
    epoch_seed = iter(range(tcfg.seed, tcfg.seed + 10_000))
    fit_options: dict[str, Any] = {}
    if strategy is None:
        dataset = tf.data.Dataset.from_generator(
            lambda: source.batches(tcfg.batch_size, next(epoch_seed)), output_signature=signature
        ).prefetch(2)
    else:  # each worker's slice of the same global batches (see models.distributed)
        from models.distributed import worker_dataset

        dataset = tf.keras.utils.experimental.DatasetCreator(
            lambda context: worker_dataset(source, tcfg, signature, context)
        )
        fit_options["steps_per_epoch"] = steps_per_epoch

    validator = _Validator(
        model,
        source,
        validation,
        candidates.sets["catalogue"],
        split.as_of,
        tcfg,
        workdir / "tensorboard",
        steps_per_epoch,
        strategy=strategy,
        window=window,
    )
    started = time.perf_counter()
    model.fit(
        dataset,
        epochs=tcfg.epochs,
        verbose=verbose,
        callbacks=[
            validator,
            tf.keras.callbacks.TensorBoard(log_dir=str(workdir / "tensorboard"), update_freq="epoch"),
        ],
        **fit_options,
    )
    seconds = time.perf_counter() - started
    validator.restore_best()
    tied = tie_untrained_rows(model, catalog, history, before=window.cutoff if window is not None else None)
    log.info("rows tied to the OOV row (no training positive): %s", tied)

    # Every scorer scores every story row of the catalog; each candidate set takes its rows.
    all_stories = np.arange(len(catalog.story_ids))
    story_emb = _embed(model.story_tower, story_features(history, all_stories, candidates.story_as_of(all_stories)))
    scorers: dict[str, Scorer] = {}
    users = np.unique(np.concatenate([e.users for e in evaluation.values()]))
    user_emb = _embed(model.user_tower, user_features(history, users, split.user_as_of(history, users)))
    user_pos = np.full(len(catalog.user_ids), -1)
    user_pos[users] = np.arange(len(users))
    scorers["model"] = lambda u: user_emb[user_pos[u]] @ story_emb.T
    choices: dict[str, dict[str, Any]] = {}
    if baselines:
        fitted = fit_baselines(history, split, catalog, cfg)
        for name, (scorer, choice) in fitted.items():
            scorers[name] = scorer
            choices[name] = choice
    metrics, comparisons = _measure_all(scorers, evaluation, candidates, ks, tcfg)
    result = TrainingResult(
        metrics=metrics,
        history=validator.history,
        best_epoch=validator.best_epoch,
        # Training steps only: the time spent validating after each epoch is left out.
        examples_per_second=len(train_rows) * len(validator.history) / max(seconds - validator.seconds, 1e-9),
        model=model,
        vocabularies=vocabularies,
        comparisons=comparisons,
        baseline_choices=choices,
        split={
            "kind": split.kind,
            "as_of": split.as_of,
            "test_events": len(split.test),
            "train_events": len(history.ts),
            "candidates": {name: len(c) for name, c in candidates.sets.items()},
            "cold_candidates": int(candidates.cold.sum()),
        },
    )
    written = {
        "metrics": metrics,
        "comparisons": comparisons,
        "history": result.history,
        "best_epoch": result.best_epoch,
        "examples_per_second": result.examples_per_second,
        "split": result.split,
        "baseline_choices": choices,
    }
    if strategy is not None:  # every worker must end with the same weights: say which
        from models.distributed import weights_digest

        written["weights_sha256"] = weights_digest(model)
    (workdir / "metrics.json").write_text(json.dumps(written, indent=2, default=float))
    return result


def evaluation_ks(cfg: EbrConfig) -> list[int]:
    """`train.eval_ks` and every depth the promotion gate reads."""
    gate_ks = {int(m.partition("@")[2]) for m in cfg.gate.metrics if m.partition("@")[2].isdigit()}
    return sorted(set(cfg.train.eval_ks) | gate_ks)


@dataclass(frozen=True)
class CandidateSets:
    """The stories an evaluation ranks, as catalogue rows.

    - "eligible": what the story index would hold during the test window, what serving
      serves: created before the window ends, at most `story_max_age_days` old when it
      starts (the story dataflow's rule). The random split has no window: the catalogue.
    - "catalogue": every story created before the window ends.
    `trained` marks the stories with a training event; the others are cold.
    """

    sets: dict[str, np.ndarray]
    trained: np.ndarray  # [n_stories] bool
    created_ts: np.ndarray  # [n_stories]
    as_of: int

    @classmethod
    def at(cls, catalog: Catalog, history: EventHistory, split: Split, story_max_age_days: float) -> CandidateSets:
        end = int(pc.max(split.test["ts"]).as_py()) + 1 if len(split.test) else split.as_of
        created = catalog.story_created_ts
        catalogue = np.flatnonzero(created < end)
        if split.kind == "time":
            eligible = np.flatnonzero((created < end) & (created >= split.as_of - story_max_age_days * SECONDS_PER_DAY))
        else:
            eligible = catalogue
        trained = np.zeros(len(catalog.story_ids), dtype=bool)
        trained[history.story] = True
        return cls({"eligible": eligible, "catalogue": catalogue}, trained, created, split.as_of)

    @property
    def cold(self) -> np.ndarray:
        """[len(catalogue)] bool: catalogue stories without a training event."""
        return ~self.trained[self.sets["catalogue"]]

    def story_as_of(self, stories: np.ndarray) -> np.ndarray:
        """When the index embeds each story: at the cutoff, or just after its creation for
        stories created during the test window (a story index snapshot minutes later)."""
        return np.maximum(self.as_of, self.created_ts[stories] + 1)


def _evaluation_sets(
    catalog: Catalog,
    history: EventHistory,
    split: Split,
    candidates: CandidateSets,
    tcfg: TrainConfig,
    warehouse: Warehouse,
) -> dict[str, EvaluationSet]:
    """One EvaluationSet per candidate set, over the same test positives and users."""
    test_user = catalog.user_index(split.test["user_id"].to_pylist())
    test_story = catalog.story_index(split.test["story_id"].to_pylist())
    positive = positive_scores(split.test, history.cfg) >= history.cfg.label_threshold
    n_users = len(catalog.user_ids)
    truth = _ground_truth(warehouse)
    has_history = np.zeros(n_users, dtype=bool)
    has_history[history.user] = True
    sets = {}
    for name, rows in candidates.sets.items():
        position = np.full(len(catalog.story_ids), -1)
        position[rows] = np.arange(len(rows))
        keep = positive & (position[test_story] >= 0)
        users = np.unique(test_user[keep])
        if len(users) > tcfg.max_eval_users:
            users = np.sort(
                np.random.default_rng(tcfg.effective_split_seed).choice(users, tcfg.max_eval_users, replace=False)
            )
        test_by_user = rows_by_key(test_user[keep], n_users, position[test_story[keep]])
        seen_pos = position[history.story]
        seen_by_user = rows_by_key(history.user[seen_pos >= 0], n_users, seen_pos[seen_pos >= 0])
        sets[name] = EvaluationSet(
            users=users,
            test_events=[test_by_user[u][0] for u in users.tolist()],
            seen=[np.unique(seen_by_user[u][0]) for u in users.tolist()],
            n_candidates=len(rows),
            match_attributes={
                "language": (catalog.user_language[users], catalog.story_language[rows]),
                "country": (catalog.user_country[users], catalog.story_country[rows]),
            },
            oracle=_oracle(truth, catalog, rows) if truth is not None else None,
            cold=~candidates.trained[rows],
            new_users=~has_history[users],
        )
    return sets


def _ground_truth(warehouse: Warehouse):
    """The synthetic world's oracle, or None for real data."""
    from warehouse.synthetic import GroundTruth

    try:
        return GroundTruth.load(warehouse)
    except FileNotFoundError:
        return None


def _oracle(truth, catalog: Catalog, candidates: np.ndarray):
    user_row = {u: i for i, u in enumerate(truth.user_ids.tolist())}
    truth_story_row = {s: i for i, s in enumerate(truth.story_ids.tolist())}
    story_row = np.array([truth_story_row[s] for s in catalog.story_ids[candidates]])
    user_rows = np.array([user_row[u] for u in catalog.user_ids])

    def scores(users: np.ndarray) -> np.ndarray:
        u = np.repeat(user_rows[users], len(story_row))
        s = np.tile(story_row, len(users))
        return truth.oracle_scores(u, s).reshape(len(users), len(story_row))

    return scores


def _measure_all(
    scorers: dict[str, Scorer], evaluation: dict[str, EvaluationSet], candidates: CandidateSets, ks, tcfg: TrainConfig
):
    """Every scorer on every candidate set; intervals; model-vs-baseline paired differences.

    Scorers score every story row ([U, n_stories]); each candidate set takes its rows as
    columns, in the order its EvaluationSet numbers them.
    """
    metrics: dict[str, dict[str, float]] = {name: {} for name in scorers}
    comparisons: dict[str, dict[str, dict[str, float]]] = {}
    for set_name, data in evaluation.items():
        columns = candidates.sets[set_name]
        prefix = "" if set_name == "eligible" else f"{set_name}_"
        measured = {
            name: measure(lambda u, s=scorer, c=columns: np.asarray(s(u))[:, c], data, ks)
            for name, scorer in scorers.items()
        }
        for name, m in measured.items():
            metrics[name].update({prefix + k: v for k, v in summarize(m, tcfg.bootstrap_samples, tcfg.seed).items()})
        if set_name == "eligible":
            for name, m in measured.items():
                if name != "model":
                    comparisons[name] = {
                        metric: paired_difference(measured["model"], m, metric, tcfg.bootstrap_samples, tcfg.seed)
                        for metric in COMPARED
                        if metric in m.per_user
                    }
    return metrics, comparisons


def fit_baselines(
    history: EventHistory, split: Split, catalog: Catalog, cfg: EbrConfig
) -> dict[str, tuple[Scorer, dict[str, Any]]]:
    """Popularity, recent popularity, implicit ALS and EASE (item-kNN past `EASE_MAX_ITEMS`
    engaged stories), fitted on the positive training events over the whole catalogue.

    Hyper-parameters (all but all-time popularity's) are chosen on a validation split
    carved out of the training events as the test split was carved out of the log (the
    last days reaching the same minimum sizes, or a random share), then each baseline is
    refitted on every training event with its chosen parameters. ALS, EASE and item-kNN
    rank users without a training positive by recent popularity (`WithColdUserFallback`);
    recent popularity is tuned first, so they fall back on its chosen window.
    """
    tcfg = cfg.train
    positive = history.positive
    users, stories, ts = history.user[positive], history.story[positive], history.ts[positive]
    n_users, n_stories = len(catalog.user_ids), len(catalog.story_ids)
    universe = _ItemUniverse(np.unique(stories), n_stories)
    window_grid = [{"window_s": d * SECONDS_PER_DAY} for d in RECENT_WINDOW_DAYS]
    item_model = "ease" if len(universe.items) <= EASE_MAX_ITEMS else "item_knn"
    # ALS solves one f x f system per item and iteration: at 128 factors over a catalogue
    # past EASE_MAX_ITEMS a trial takes minutes here, so large catalogues search 32 and 64.
    als_grid = ALS_GRID if item_model == "ease" else tuple(p for p in ALS_GRID if p["factors"] <= 64)
    chosen: dict[str, dict[str, Any]] = {}

    def recent(fit: _Positives, params: dict[str, Any]) -> RecentPopularity:
        return RecentPopularity(universe.local(fit.stories), fit.ts, len(universe.items), fit.as_of, params["window_s"])

    def personalised(model: Any, fit: _Positives) -> Scorer:
        # Users without a training positive get recent popularity (its chosen window).
        warm = np.zeros(n_users, dtype=bool)
        warm[fit.users] = True
        return universe.wrap(
            WithColdUserFallback(
                model.fit(fit.users, universe.local(fit.stories), n_users, len(universe.items)),
                warm,
                recent(fit, chosen["recent_popularity"]["params"]),
            )
        )

    factories: dict[str, tuple[Sequence[dict[str, Any]], Callable[..., Scorer]]] = {
        "recent_popularity": (window_grid, lambda fit, p: universe.wrap(recent(fit, p))),
        "als": (als_grid, lambda fit, p: personalised(ImplicitALS(**p, seed=tcfg.seed), fit)),
        "ease": (EASE_GRID, lambda fit, p: personalised(EASE(**p, max_items=EASE_MAX_ITEMS), fit)),
        "item_knn": (ITEM_KNN_GRID, lambda fit, p: personalised(ItemKNN(**p), fit)),
    }
    factories = {name: f for name, f in factories.items() if name in ("recent_popularity", "als", item_model)}
    everything = _Positives(users, stories, ts, split.as_of)
    chosen.update({name: {"params": dict(grid[0]), "trials": []} for name, (grid, _) in factories.items()})
    if tcfg.tune_baselines:
        fit_part, validation = _validation_split(history, split, catalog, cfg)
        for name, (grid, make) in factories.items():
            choice = choose_by_validation(
                grid, lambda p, make=make: make(fit_part, p), validation, metric=BASELINE_METRIC, name=name
            )
            chosen[name] = {
                "params": choice.params,
                "trials": [
                    {**t, "metrics": {k: v for k, v in t["metrics"].items() if k.startswith(("recall@", "ndcg"))}}
                    for t in choice.trials
                ],
            }
            del choice
    out: dict[str, tuple[Scorer, dict[str, Any]]] = {
        "popularity": (
            universe.wrap(Popularity(universe.local(stories), len(universe.items))),
            {"params": {}, "trials": []},
        )
    }
    for name, (_, make) in factories.items():
        out[name] = (make(everything, chosen[name]["params"]), chosen[name])
    return out


BASELINE_METRIC = "recall@100"  # what the baselines' hyper-parameters are chosen on
RECENT_WINDOW_DAYS = (1.0, 3.0, 7.0, 28.0)
# EASE inverts an items x items matrix (n^3): past this many engaged stories item-kNN
# stands in for it (same family of item-item models, sparse).
EASE_MAX_ITEMS = 6000


@dataclass(frozen=True)
class _Positives:
    users: np.ndarray
    stories: np.ndarray  # catalogue rows
    ts: np.ndarray
    as_of: int


class _ItemUniverse:
    """Baselines are fitted over the engaged stories only (EASE is n_items^2) and score the
    catalogue: every other story gets COLD_ITEM_SCORE, as the baselines give cold items."""

    def __init__(self, items: np.ndarray, n_stories: int):
        self.items = items
        self.local_of = np.full(n_stories, -1)
        self.local_of[items] = np.arange(len(items))

    def local(self, stories: np.ndarray) -> np.ndarray:
        return self.local_of[stories]

    def wrap(self, scorer: Scorer) -> Scorer:
        def catalogue_scores(users: np.ndarray) -> np.ndarray:
            local = np.asarray(scorer(users), dtype=np.float32)
            out = np.full((len(users), len(self.local_of)), COLD_ITEM_SCORE, dtype=np.float32)
            out[:, self.items] = local
            return out

        return catalogue_scores


def _validation_split(
    history: EventHistory, split: Split, catalog: Catalog, cfg: EbrConfig
) -> tuple[_Positives, EvaluationSet]:
    """The training positives split again the way the log was split: (fit part, validation).

    Validation ranks the whole catalogue (the scorers' columns): stories created after the
    training period have no positive in it and every baseline puts them last.
    """
    tcfg = cfg.train
    positive = np.flatnonzero(history.positive)
    if split.kind == "time":
        days = (history.ts[positive] // SECONDS_PER_DAY).astype(np.int64)
        unique_days = np.unique(days)
        by_day = rows_by_key(np.searchsorted(unique_days, days), len(unique_days), history.user[positive])

        def day_counts():
            for i in range(len(unique_days) - 1, -1, -1):
                yield int(unique_days[i]), len(by_day[i][0]), set(by_day[i][0].tolist())

        first_day = choose_test_window(day_counts(), len(unique_days), tcfg)
        cutoff = int(int(first_day) * SECONDS_PER_DAY)
        held = history.ts[positive] >= cutoff
    else:
        held = np.zeros(len(positive), dtype=bool)
        held[
            np.random.default_rng(tcfg.effective_split_seed + 1).choice(
                len(positive), size=max(1, int(len(positive) * tcfg.test_fraction)), replace=False
            )
        ] = True
        cutoff = split.as_of
    fit_rows, val_rows = positive[~held], positive[held]
    n_users = len(catalog.user_ids)
    val_users = np.unique(history.user[val_rows])
    if len(val_users) > tcfg.max_eval_users:
        val_users = np.sort(
            np.random.default_rng(tcfg.effective_split_seed).choice(val_users, tcfg.max_eval_users, replace=False)
        )
    test_by_user = rows_by_key(history.user[val_rows], n_users, history.story[val_rows])
    seen_by_user = rows_by_key(history.user[fit_rows], n_users, history.story[fit_rows])
    data = EvaluationSet(
        users=val_users,
        test_events=[test_by_user[u][0] for u in val_users.tolist()],
        seen=[np.unique(seen_by_user[u][0]) for u in val_users.tolist()],
        n_candidates=len(catalog.story_ids),
    )
    return _Positives(history.user[fit_rows], history.story[fit_rows], history.ts[fit_rows], cutoff), data


def _embed(tower, features: dict[str, np.ndarray], batch_size: int = 4096) -> np.ndarray:
    n = len(next(iter(features.values())))
    parts = [
        tower({k: v[i : i + batch_size] for k, v in features.items()}, training=False).numpy()
        for i in range(0, n, batch_size)
    ]
    return np.concatenate(parts) if parts else np.zeros((0, 1), np.float32)


def _output_signature(sample: dict[str, Any]):
    def spec(value: np.ndarray):
        dtype = tf.string if value.dtype == object else tf.float32
        return tf.TensorSpec(shape=(None, *value.shape[1:]), dtype=dtype)

    signature = {
        "user": {k: spec(sample["user"][k]) for k in USER_INPUTS},
        "story": {k: spec(sample["story"][k]) for k in STORY_INPUTS},
        "log_q": tf.TensorSpec(shape=(None,), dtype=tf.float32),
        "weight": tf.TensorSpec(shape=(None,), dtype=tf.float32),
        "label": tf.TensorSpec(shape=(None,), dtype=tf.float32),
    }
    if "corpus_story" in sample:
        signature["corpus_story"] = {k: spec(sample["corpus_story"][k]) for k in STORY_INPUTS}
        signature["corpus_log_q"] = tf.TensorSpec(shape=(None,), dtype=tf.float32)
        signature["corpus_unigram_log_q"] = tf.TensorSpec(shape=(None,), dtype=tf.float32)
    return signature


@dataclass(frozen=True)
class _ValidationWindow:
    """`train.validation = "time"`: the last days of the training log, the users with a
    positive in them, and what the epoch is chosen on (their recall@100 with the users
    embedded as of `cutoff`, the stories as of `cutoff`, created before the window ends)."""

    cutoff: int
    data: EvaluationSet  # candidates: every catalogue story row
    eligible: np.ndarray  # [n_stories] bool: created before the window ends


def _validation_window(
    history: EventHistory, split: Split, catalog: Catalog, cfg: EbrConfig
) -> _ValidationWindow | None:
    """The time split's validation window (carved as `_validation_split` carves the
    baselines'), or None, with a warning, when the training log cannot hold one."""
    if split.kind != "time":
        raise ValueError("train.validation = 'time' needs train.split = 'time': the random split has no last days")
    try:
        fit, data = _validation_split(history, split, catalog, cfg)
    except ValueError as error:
        log.warning("train.validation = 'time': %s; the epoch is chosen on random held-out positives instead", error)
        return None
    end = int(history.ts.max()) + 1
    return _ValidationWindow(fit.as_of, data, catalog.story_created_ts < end)


class _Validator(tf.keras.callbacks.Callback):
    """After each epoch: validation top-100 accuracy; keeps the best weights; early stop.

    With a `window` (`train.validation = "time"`) the figure is instead the window users'
    recall@100 over the catalogue, measured as the test is (users as of the window's start,
    stories they engaged with before it excluded): what the time split's test asks, where
    top-100 accuracy on random held-out positives, each with its user's history up to
    that moment, rewards predicting the next rating of a session.

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
        window: _ValidationWindow | None = None,
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
        position = np.full(len(history.catalog.story_ids), -1)
        position[candidates] = np.arange(len(candidates))
        self.targets = position[history.story[self.rows]]
        # The candidates' features are fixed for the run; only the towers change per epoch.
        self.candidate_features = story_features(history, candidates, np.full(len(candidates), as_of))

    def _window_recall(self) -> float:
        window, history = self.window, self.source.history
        users = window.data.users
        stories = np.arange(len(history.catalog.story_ids))
        as_of = np.full(len(users), window.cutoff)
        u = _embed(self._model.user_tower, user_features(history, users, as_of))
        s = _embed(self._model.story_tower, story_features(history, stories, np.full(len(stories), window.cutoff)))
        position = np.full(len(history.catalog.user_ids), -1)
        position[users] = np.arange(len(users))

        def scores(q: np.ndarray) -> np.ndarray:
            return np.where(window.eligible[np.newaxis, :], u[position[q]] @ s.T, -np.inf)

        return float(measure(scores, window.data, [100]).metrics["recall@100"])

    def on_epoch_end(self, epoch, logs=None):
        started = time.perf_counter()
        if self.window is not None:
            accuracy = self._window_recall()
        else:
            users = _embed(self._model.user_tower, self.source.batch(self.rows, corpus=False)["user"])
            stories = _embed(self._model.story_tower, self.candidate_features)
            scores = users @ stories.T
            target_scores = scores[np.arange(len(self.rows)), self.targets]
            ranks = (scores > target_scores[:, None]).sum(axis=1)
            accuracy = float(np.mean((ranks < 100) & (self.targets >= 0)))
        if self.strategy is not None:
            # Every worker must take the same decision (keep, stop) or the collectives of
            # the next epoch wait forever: decide on the workers' mean.
            from models.distributed import mean_over_workers

            accuracy = mean_over_workers(self.strategy, accuracy)
        name = "val_window_recall@100" if self.window is not None else "val_top_100_accuracy"
        self.history.append({"epoch": epoch + 1, "loss": float((logs or {}).get("loss", np.nan)), name: accuracy})
        with self.writer.as_default():
            tf.summary.scalar(name.removeprefix("val_"), accuracy, step=epoch + 1)
        log.info("epoch %d: %s %.4f", epoch + 1, name, accuracy)
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
