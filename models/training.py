"""Training and evaluation: `train_and_evaluate(cfg, workdir)`.

1. Split the warehouse events: by time (a test window at the end of the log, at least
   `holdout_days` long and extended until it holds `min_test_users` and
   `min_test_positives`) or at random (`test_fraction`, numpy seed `train.seed`, as in the
   TFRS tutorial protocol).
2. Index the training events (`models.features.EventHistory`); the examples are the
   positive training events, each with features as of its own timestamp, built batch by
   batch while training (never all in memory). A random `validation_fraction` of them
   is held out to choose the epoch, or with `train.validation = "time"` the training
   log's last days (no training examples then; their events still feed the features).
3. Fit the two-tower model; after each epoch measure validation top-100 accuracy (or the
   last days' users' recall@100, as the test measures it), keep the
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

Each step has its module: `models.splits` (1), `models.examples` (2, the batches),
`models.early_stopping` (3, the epoch), `models.offline_evaluation` and
`models.baseline_fitting` (4); this one runs them in order and keeps the record
(`TrainingResult`, `metrics.json`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from config import EbrConfig, TrainConfig
from models.baseline_fitting import fit_baselines
from models.distributed import check_workers, weights_digest, worker_dataset
from models.early_stopping import EpochValidator, validation_window
from models.evaluation import EvaluationSet, Scorer, positions
from models.examples import ExampleSource, output_signature
from models.features import Catalog, EventHistory, story_features, story_stat_names, user_features, user_stat_names
from models.offline_evaluation import CandidateSets, evaluation_ks, evaluation_sets, measure_all
from models.splits import Split, load_split
from models.tower_runner import embed_with_tower
from models.towers import OOV_INDEX, PAD_INDEX, adapt_normalization
from models.two_tower import TwoTowerModel, WarmupCosine
from warehouse import Warehouse

log = logging.getLogger(__name__)


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
    steps_per_epoch: int = 0  # optimisation steps (batches) per epoch


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
    window = validation_window(history, split, catalog, cfg) if tcfg.validation == "time" else None
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
        time_block_rows=tcfg.time_block_batches * tcfg.batch_size,
        seed=tcfg.seed,
    )
    steps_per_epoch = source.batches_per_epoch(tcfg.batch_size)
    if steps_per_epoch == 0:
        raise ValueError(
            f"{len(train_rows)} training examples make no full batch of train.batch_size = {tcfg.batch_size}: "
            "lower train.batch_size or train on more events"
        )
    vocabularies = build_vocabularies(catalog, history, train_rows, cfg.model.min_id_count)
    log.info(
        "split %s: %d train events (%d examples), %d test events",
        split.kind,
        len(history.ts),
        len(train_rows),
        len(split.test),
    )

    check_workers(cfg, strategy.num_replicas_in_sync if strategy is not None else 1)
    model = _compiled_model(
        cfg,
        vocabularies,
        catalog,
        source,
        rng.choice(train_rows, size=min(len(train_rows), 20_000), replace=False),
        strategy,
    )

    candidates = CandidateSets.at(catalog, history, split, cfg.embed.story_max_age_days)
    evaluation = evaluation_sets(catalog, history, split, candidates, tcfg, warehouse)
    dataset, fit_options = _training_dataset(source, train_rows, tcfg, steps_per_epoch, strategy)
    validator = EpochValidator(
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

    scorers: dict[str, Scorer] = {"model": _model_scorer(model, catalog, history, split, candidates, evaluation)}
    choices: dict[str, dict[str, Any]] = {}
    if baselines:
        fitted = fit_baselines(history, split, catalog, cfg)
        for name, (scorer, choice) in fitted.items():
            scorers[name] = scorer
            choices[name] = choice
    metrics, comparisons = measure_all(scorers, evaluation, candidates, ks, tcfg)
    result = TrainingResult(
        metrics=metrics,
        history=validator.history,
        best_epoch=validator.best_epoch,
        # Training steps only: the time spent validating after each epoch is left out.
        examples_per_second=len(train_rows) * len(validator.history) / max(seconds - validator.seconds, 1e-9),
        steps_per_epoch=steps_per_epoch,
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
    _write_metrics(workdir / "metrics.json", result, strategy)
    return result


def _compiled_model(
    cfg: EbrConfig,
    vocabularies: dict[str, list[str]],
    catalog: Catalog,
    source: ExampleSource,
    sample_rows: np.ndarray,
    strategy: tf.distribute.Strategy | None,
) -> TwoTowerModel:
    """The two-tower model (in the strategy's scope), its statistics normalised on the
    examples `sample_rows`, compiled with the warm-up cosine schedule."""
    fcfg, tcfg = cfg.features, cfg.train
    with strategy.scope() if strategy is not None else contextlib.nullcontext():
        model = TwoTowerModel(
            vocabularies,
            len(user_stat_names(fcfg)),
            len(story_stat_names(fcfg)),
            catalog.story_content.shape[1],
            cfg.model,
        )
        sample = source.batch(sample_rows)
        adapt_normalization(model.user_tower.stats_norm, sample["user"]["user_stats"])
        adapt_normalization(model.story_tower.stats_norm, sample["story"]["story_stats"])
        schedule = WarmupCosine(
            tcfg.learning_rate, tcfg.decay_steps, tcfg.warmup_steps, floor=tcfg.min_learning_rate_ratio
        )
        model.compile(optimizer=optimizer(tcfg, schedule))
    return model


# Parameters weight decay leaves alone: biases and LayerNorm's scale and offset, as AdamW's
# authors and most practice do (shrinking them regularises nothing and moves the layers'
# operating point). Matched as substrings of the variables' names.
NOT_DECAYED = ("bias", "gamma", "beta")


def optimizer(tcfg: TrainConfig, learning_rate) -> tf.keras.optimizers.Optimizer:
    """Adam; with `train.weight_decay` > 0, AdamW (decoupled weight decay, Loshchilov and
    Hutter 2019): every step also shrinks each weight by learning rate x weight_decay of
    itself, apart from its gradient, except the NOT_DECAYED ones. The embedding tables are
    decayed too, every row on every step, the rows a batch did not touch included."""
    if tcfg.weight_decay == 0:
        return tf.keras.optimizers.Adam(learning_rate=learning_rate)
    adamw = tf.keras.optimizers.AdamW(learning_rate=learning_rate, weight_decay=tcfg.weight_decay)
    adamw.exclude_from_weight_decay(var_names=list(NOT_DECAYED))
    return adamw


def _training_dataset(
    source: ExampleSource,
    train_rows: np.ndarray,
    tcfg: TrainConfig,
    steps_per_epoch: int,
    strategy: tf.distribute.Strategy | None,
) -> tuple[Any, dict[str, Any]]:
    """What `model.fit` reads, and the options it needs: epoch after epoch, the batches of
    a new permutation (seeds train.seed, train.seed + 1, ...); with a strategy, this
    worker's slice of the same global batches (see models.distributed).

    Both are endless datasets cut into epochs by `steps_per_epoch` (the batches of one
    permutation). A dataset that ends with each epoch instead costs Keras one more call
    of its train function that meets the end of the data, and that call was seen to
    advance the optimizer's step counter while no weight moved: one phantom step per
    epoch, which shifts the learning-rate schedule and Adam's bias correction off the
    steps actually taken (and one process off the workers)."""
    signature = output_signature(source.batch(train_rows[: tcfg.batch_size]))
    if strategy is not None:
        dataset = tf.keras.utils.experimental.DatasetCreator(
            lambda context: worker_dataset(source, tcfg, signature, context)
        )
        return dataset, {"steps_per_epoch": steps_per_epoch}
    epoch_seed = iter(range(tcfg.seed, tcfg.seed + 10_000))
    dataset = (
        tf.data.Dataset.from_generator(
            lambda: source.batches(tcfg.batch_size, next(epoch_seed)), output_signature=signature
        )
        .repeat()
        .prefetch(2)
    )
    return dataset, {"steps_per_epoch": steps_per_epoch}


def _model_scorer(
    model: TwoTowerModel,
    catalog: Catalog,
    history: EventHistory,
    split: Split,
    candidates: CandidateSets,
    evaluation: dict[str, EvaluationSet],
) -> Scorer:
    """The trained model as a scorer of the evaluated users over every story row of the
    catalogue (each candidate set takes its rows): users embedded when `split` says,
    stories when the index would embed them."""
    all_stories = np.arange(len(catalog.story_ids))
    story_emb = embed_with_tower(
        model.story_tower, story_features(history, all_stories, candidates.story_as_of(all_stories))
    )
    users = np.unique(np.concatenate([e.users for e in evaluation.values()]))
    user_emb = embed_with_tower(model.user_tower, user_features(history, users, split.user_as_of(history, users)))
    user_pos = positions(users, len(catalog.user_ids))
    return lambda u: user_emb[user_pos[u]] @ story_emb.T


def _write_metrics(path: Path, result: TrainingResult, strategy: tf.distribute.Strategy | None) -> None:
    """The run's record (`metrics.json`): what TrainingResult holds but the model."""
    written = {
        "metrics": result.metrics,
        "comparisons": result.comparisons,
        "history": result.history,
        "best_epoch": result.best_epoch,
        "examples_per_second": result.examples_per_second,
        "steps_per_epoch": result.steps_per_epoch,
        "split": result.split,
        "baseline_choices": result.baseline_choices,
    }
    if strategy is not None:  # every worker must end with the same weights: say which
        written["weights_sha256"] = weights_digest(result.model)
    path.write_text(json.dumps(written, indent=2, default=float))


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
