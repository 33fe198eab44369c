"""One typed configuration for every entry point.

The configuration is assembled once, at the entry point (CLI, DAG task, Beam `run()`),
from four layers, each overriding the one before:

1. `config/defaults.toml`, shipped with the package;
2. an optional TOML file (`--config FILE` or `EBR_CONFIG=FILE`);
3. environment variables `EBR_<SECTION>__<KEY>` (and `EBR_ROOT` for the top-level key);
4. command-line overrides `section.key=value` (`--set`, and `--root`).

Nothing here reads the environment at import time: `load_config()` takes the environment
as an argument (defaulting to `os.environ` when called), so tests pass their own.

The module is longer than most on purpose: its sections, every field with the comment
that says what it does, are the settings reference (README, "Configuration") and read
best in one file; the loader is the last hundred lines.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from datetime import date
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

REPO_DIR = Path(__file__).resolve().parent.parent
DEFAULTS_FILE = Path(__file__).with_name("defaults.toml")
ENV_PREFIX = "EBR_"


class ConfigError(ValueError):
    """The configuration could not be assembled; the message names the key and source."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StoreConfig(_Section):
    keep_versions: int = Field(5, ge=1)
    incomplete_grace_hours: float = Field(24.0, ge=0)
    lock_timeout_s: float = Field(30.0, gt=0)
    cas_retries: int = Field(20, ge=1)


class GcsConfig(_Section):
    endpoint: str = ""
    project: str = ""


WorldSize = Literal["tiny", "small", "medium", "large"]

# Counts per size preset. "tiny" is for unit tests (seconds); "large" is the 10M-event
# world the benchmarks use. Explicit counts in [world] override the preset.
WORLD_SIZES: dict[str, dict[str, int]] = {
    "tiny": dict(n_users=300, n_creators=60, n_stories=2_000, n_events=30_000, days=14),
    "small": dict(n_users=3_000, n_creators=400, n_stories=20_000, n_events=400_000, days=21),
    "medium": dict(n_users=30_000, n_creators=3_000, n_stories=200_000, n_events=4_000_000, days=28),
    "large": dict(n_users=100_000, n_creators=10_000, n_stories=1_000_000, n_events=10_000_000, days=30),
}


class WorldConfig(_Section):
    """Parameters of the synthetic Spotlight world (see `warehouse.synthetic`)."""

    size: WorldSize = "small"
    seed: int = 20261123
    start_date: date = date(2026, 10, 1)
    days: int | None = Field(None, ge=1)
    n_users: int | None = Field(None, ge=1)
    n_creators: int | None = Field(None, ge=1)
    n_stories: int | None = Field(None, ge=1)
    n_events: int | None = Field(None, ge=1)
    n_topics: int = Field(24, ge=2)
    content_dim: int = Field(32, ge=2)
    hashtags_per_topic: int = Field(12, ge=1)
    # A story is shown for this many days after it is posted (short videos go stale).
    story_lifetime_days: float = Field(7.0, gt=0)
    # Share of impressions drawn from the user's own interests (the rest: global trends).
    interest_exposure: float = Field(0.6, ge=0, le=1)
    # Share of impressions restricted to stories in the user's language.
    local_exposure: float = Field(0.75, ge=0, le=1)

    def count(self, name: str) -> int:
        """The effective value of a count (`n_users`, `days`, ...) after the preset."""
        explicit = getattr(self, name)
        return int(explicit if explicit is not None else WORLD_SIZES[self.size][name])


class FeatureConfig(_Section):
    """What the towers see (see `models.features`)."""

    # Most recent positively engaged stories in the user's history sequence.
    history_length: int = Field(50, ge=1)
    # Hashtags of this many most recent positives (up to `story_hashtags` each) form the
    # user's hashtag sequence.
    hashtag_history_stories: int = Field(10, ge=1)
    story_hashtags: int = Field(4, ge=1)
    windows_days: tuple[float, ...] = (1.0, 7.0, 28.0)
    # One positive label from several engagement signals: an event is a positive when
    # sum(weight * signal) >= label_threshold; the sum (capped) weights the example.
    label_weights: dict[str, float] = {"long_view": 1.0, "favorite": 1.0, "share": 1.0, "boost": 1.0}
    label_threshold: float = Field(1.0, gt=0)
    max_example_weight: float = Field(3.0, gt=0)


class ModelConfig(_Section):
    """The two-tower model (see `models.two_tower`)."""

    output_dim: int = Field(128, ge=2)
    id_embedding_dim: int = Field(64, ge=1)
    small_embedding_dim: int = Field(16, ge=1)
    mlp_width: int = Field(256, ge=8)
    resnet_blocks: int = Field(2, ge=0)
    cross_layers: int = Field(4, ge=0)
    cross_projection_dim: int | None = 64
    dropout: float = Field(0.1, ge=0, lt=1)
    temperature: float = Field(0.1, gt=0)
    loss: Literal["sigmoid", "softmax"] = "softmax"
    # "in_batch": the batch's other stories are the negatives (the seed's choice).
    # "impressions": no in-batch negatives; pointwise sigmoid on every impression, engaged
    # or not (the contrast the seed argues against: shown stories are mostly local, so
    # the model learns less about country and language).
    negatives: Literal["in_batch", "impressions"] = "in_batch"
    # Initial value of the learnable logit bias of the sigmoid losses (SigLIP starts at -10:
    # one positive among batch-1 negatives per row).
    sigmoid_bias_init: float = -10.0
    # logQ correction: logits subtract logq_strength * log(sampling probability) of each
    # candidate; 0 turns it off, 1 is the full correction (see `models.loss`).
    logq_strength: float = Field(1.0, ge=0)
    # Ids seen fewer times than this in training share the out-of-vocabulary embedding.
    min_id_count: int = Field(1, ge=1)
    # Training only: each story id the story tower looks up is replaced by the OOV id with
    # this probability (creator ids with creator_id_dropout), so the OOV row is trained and
    # a story new since training leans on its content features. Off at inference/export.
    id_dropout: float = Field(0.1, ge=0, le=1)
    creator_id_dropout: float = Field(0.0, ge=0, le=1)
    # How the user tower reads the history of engaged stories (history_story_ids and
    # history_creator_ids): "mean" averages their embeddings; "transformer" runs
    # self-attention over the sequence (story + creator embedding + a learned recency
    # position embedding, padding masked) and averages its outputs (see `models.towers`).
    # The hashtag history is averaged either way.
    sequence_encoder: Literal["mean", "transformer"] = "mean"
    transformer_layers: int = Field(2, ge=1)
    transformer_heads: int = Field(2, ge=1)
    transformer_ff_dim: int = Field(128, ge=1)
    transformer_dropout: float = Field(0.1, ge=0, lt=1)
    # False makes the encoder blind to order (then only the set of stories matters).
    transformer_positions: bool = True
    # ReZero (Bachlechner et al. 2020): each block's attention and feed-forward branch is
    # scaled by a learned scalar that starts at 0, so the encoder starts as the mean of its
    # tokens (mean pooling) and departs from it only as far as training pays.
    transformer_rezero: bool = False
    # A LayerNorm on the encoder's outputs before their mean. It puts every history on one
    # scale (each coordinate ~1) while a user without history gets zeros: two regimes for
    # the layers above. False keeps the encoding on the scale of the embeddings.
    transformer_output_norm: bool = True
    # Mixed negatives (Yang et al. 2020): this many stories sampled uniformly from the
    # candidate corpus per batch are negatives of every row, besides the in-batch ones.
    # 0 = in-batch negatives only. The example source samples them; the batch keys are in
    # `models.two_tower.TwoTowerModel`.
    corpus_negatives: int = Field(0, ge=0)
    # A popularity prior inside the two unit vectors (so serving's inner-product index
    # ranks by it too): the last of the output_dim dimensions holds beta = tanh(linear
    # map of the story's normalised statistics: windowed counts, age) on the story side
    # and alpha = tanh(linear map of the user tower's input) on the user side; the other
    # output_dim - 1 are the towers' representation, scaled by sqrt(1 - beta^2) and
    # sqrt(1 - alpha^2) so both vectors keep unit norm. The score is then
    # sqrt((1 - alpha^2)(1 - beta^2)) * cosine + alpha * beta: a user-dependent weight on a
    # popularity/recency score the story tower reads straight from its counts.
    popularity_prior: bool = False

    @model_validator(mode="before")
    @classmethod
    def _no_removed_keys(cls, values: Any) -> Any:
        if isinstance(values, Mapping) and "logq_correction" in values:
            raise ValueError(
                "model.logq_correction was replaced by model.logq_strength: set "
                "logq_strength = 1.0 for logq_correction = true, 0.0 for false"
            )
        return values

    @model_validator(mode="after")
    def _corpus_negatives_need_in_batch(self) -> ModelConfig:
        if self.corpus_negatives and self.negatives != "in_batch":
            raise ValueError(
                f"model.corpus_negatives = {self.corpus_negatives} adds negatives to the in-batch loss; "
                f"with model.negatives = {self.negatives!r} set it to 0"
            )
        return self


class TrainConfig(_Section):
    batch_size: int = Field(1024, ge=2)
    epochs: int = Field(30, ge=1)
    learning_rate: float = Field(3e-3, gt=0)
    # The learning rate rises linearly over `warmup_steps` optimisation steps, then follows
    # a cosine down to `min_learning_rate_ratio * learning_rate` at `decay_steps` and stays
    # there. Both are counted in steps, not epochs: the schedule does not stretch with
    # `epochs` (an upper bound for early stopping), and the epoch early stopping keeps is
    # never one that ended inside the warm-up.
    warmup_steps: int = Field(200, ge=0)
    decay_steps: int = Field(20_000, ge=1)
    min_learning_rate_ratio: float = Field(0.05, ge=0, le=1)
    # Decoupled weight decay (AdamW): each step shrinks every weight but biases and
    # LayerNorm parameters by learning rate x weight_decay of itself (`models.training.optimizer`).
    # 0 trains with Adam.
    weight_decay: float = Field(0.0, ge=0)
    patience: int = Field(4, ge=1)
    seed: int = 42
    # Seed of the random split and of the evaluated-user sample; None: `seed`. Fix it to
    # vary the model's seed on one split (benchmarks/model_quality.py does).
    split_seed: int | None = None
    # "time": a test window at the end of the log (see below); "random": a random
    # `test_fraction` of the events (the TFRS tutorial protocol).
    split: Literal["time", "random"] = "time"
    # The time split's test window: the last `holdout_days` day partitions at least,
    # extended one day at a time until it holds `min_test_users` users with a positive and
    # `min_test_positives` positives (a window of three quiet days can hold a dozen users:
    # nothing measured on it means anything), but never more than `max_holdout_fraction`
    # of the event days; when that cannot reach the minimum the split says so and fails.
    holdout_days: int = Field(3, ge=1)
    min_test_users: int = Field(100, ge=1)
    min_test_positives: int = Field(1000, ge=1)
    max_holdout_fraction: float = Field(0.5, gt=0, lt=1)
    test_fraction: float = Field(0.2, gt=0, lt=1)
    # How a training example's features are timed. "event": as of the example's own
    # timestamp (the production rule: no look-ahead; required for the time split).
    # "snapshot": the user as of their last training event and the stories as of the end
    # of training, with the example's own story removed from the history sequences
    # (leave-one-out). Only for the random split, whose test events are interleaved with
    # the training ones: there, "as of the event" teaches next-in-session prediction
    # while evaluation asks for the user's held-out items.
    example_features: Literal["event", "snapshot"] = "event"
    # Time-local batches: N > 0 cuts the examples, in time order, into blocks of N batches
    # and draws each batch from one block, so its in-batch negatives are stories engaged
    # about when its rows' were, with features as of about then, and the logQ correction
    # uses each story's share of its block (`models.examples.ExampleSource`). 0 draws every
    # batch from a permutation of all training examples (before 2026-12-03 the only way;
    # 16 was better on all three validation windows: README, "Model quality").
    time_block_batches: int = Field(16, ge=0)
    # How the epoch is chosen (early stopping). "random": a random `validation_fraction` of
    # the training positives, each with features as of its own time, ranked for top-100
    # accuracy. "time" (time split only): the last days of the training log, carved as the
    # test window is carved from the log (the same minimum sizes; falls back to "random",
    # with a warning, when the log is too short), are held out of the training examples
    # (their events still feed the features) and the epoch with the best recall@100 of
    # their users, embedded as of the window's start, is kept: what the test measures.
    validation: Literal["random", "time"] = "random"
    # Share of the training examples held out to choose the epoch ("random" validation).
    validation_fraction: float = Field(0.1, gt=0, lt=1)
    eval_ks: tuple[int, ...] = (10, 50, 100, 500)
    max_eval_users: int = Field(5000, ge=1)
    # Baselines' hyper-parameters (ALS factors and regularisation, EASE's lambda, kNN's
    # neighbours, the recent-popularity window) are chosen on a validation split carved
    # out of the training events the same way the test split is carved out of the log.
    tune_baselines: bool = True
    # Bootstrap resamples of the evaluated users behind every confidence interval.
    bootstrap_samples: int = Field(1000, ge=10)
    # Worker processes of one training run (tf.distribute.MultiWorkerMirroredStrategy on
    # 127.0.0.1, see models.distributed); batch_size is the global batch, split between them.
    workers: int = Field(1, ge=1)

    @property
    def effective_split_seed(self) -> int:
        return self.seed if self.split_seed is None else self.split_seed

    def check_splits_over(self, workers: int) -> None:
        """Raises ValueError unless the global batch splits evenly over `workers` training
        processes (each takes batch_size / workers rows of every batch: models.distributed)."""
        if self.batch_size % workers:
            raise ValueError(
                f"train.batch_size = {self.batch_size} does not split evenly over {workers} workers: make it a multiple of {workers}"
            )

    @model_validator(mode="after")
    def _batch_splits_over_workers(self) -> TrainConfig:
        self.check_splits_over(self.workers)
        return self

    @model_validator(mode="after")
    def _snapshot_needs_random_split(self) -> TrainConfig:
        if self.example_features == "snapshot" and self.split != "random":
            raise ValueError("example_features='snapshot' looks ahead in time: use it only with split='random'")
        return self


class GateConfig(_Section):
    """The promotion gate a trained model passes before it is published."""

    # Every one of these is checked, against popularity (the better of all-time and
    # recent popularity) and against the published model.
    metrics: tuple[str, ...] = ("recall@10", "recall@100", "recall@500", "ndcg@10")
    # The model must beat popularity by at least this fraction (0: simply not be worse).
    min_lift_over_popularity: float = Field(0.0, ge=0)
    # ...and lose no more than this fraction against the model LATEST names.
    max_regression: float = Field(0.10, ge=0, le=1)
    # Below this many evaluated users or test positives the gate does not decide: it
    # refuses, and says the test set is too small to tell a collapsed model from a good one.
    min_eval_users: int = Field(100, ge=1)
    min_eval_positives: int = Field(500, ge=1)


class EmbedConfig(_Section):
    """The Beam embedding dataflows (see `beam_jobs`)."""

    # Beam runner and its pipeline options: configuration, not code. Extra options are
    # passed through as given (e.g. ["--project=p", "--region=europe-west4",
    # "--temp_location=gs://b/tmp", "--setup_file=./setup.py"] for Dataflow).
    # "beam_jobs.dask_runner.DaskRunner" runs the jobs on a dask.distributed cluster.
    runner: str = "DirectRunner"
    pipeline_options: tuple[str, ...] = ()
    # The Dask runner's scheduler (--dask_client_address), e.g. "tcp://127.0.0.1:8786"
    # (`make dask`); None: the runner starts a throwaway local cluster of its own.
    dask_address: str | None = None
    # Rows per call of a tower (one RunInference batch).
    batch_size: int = Field(2048, ge=1)
    # Entities are grouped into this many key buckets (every event of a user, or of a
    # story, lands in one bucket); the parallelism of the feature and inference steps.
    buckets: int = Field(32, ge=1)
    # Output Parquet shards per snapshot.
    shards: int = Field(4, ge=1)
    # Days of events the user job reads before as-of; None reads every partition, as
    # training does. A finite lookback bounds the job's input but truncates the
    # all-time statistics and the history sequence, which training computes over the
    # whole log (a skew: only set it together with a model trained the same way).
    user_lookback_days: int | None = Field(None, ge=1)
    # Stories older than this at the snapshot time are not embedded (nor indexed).
    story_max_age_days: float = Field(7.0, gt=0)
    # The job fails (and publishes nothing) when more than this share of records is bad.
    max_error_rate: float = Field(0.01, ge=0, le=1)

    @field_validator("runner")
    @classmethod
    def _not_the_shipped_dask_runner(cls, runner: str) -> str:
        if runner in ("DaskRunner", "apache_beam.runners.dask.dask_runner.DaskRunner"):
            raise ValueError(
                f"{runner!r} is Beam's shipped Dask runner, which runs only the last sink of a job and mixes a "
                "DoFn's outputs; use 'beam_jobs.dask_runner.DaskRunner'"
            )
        return runner


class IndexConfig(_Section):
    """The HNSW index builder (see `index_builder`)."""

    m: int = Field(16, ge=2)
    ef_construction: int = Field(200, ge=1)
    ef_search: int = Field(64, ge=1)
    # Threads for building; 0 = every core.
    threads: int = Field(0, ge=0)
    # Validation before publishing: recall@10 against exact search on held-aside queries.
    min_recall_at_10: float = Field(0.98, ge=0, le=1)
    # When recall@10 at ef_search falls short, validation doubles ef up to this until it
    # passes, then narrows it down to the smallest ef found to pass (within 1/8), which the
    # manifest names (the service searches with it: latency traded for recall, and said
    # so). Set it to ef_search to never raise ef.
    max_ef_search: int = Field(512, ge=1)
    validation_queries: int = Field(1000, ge=1)
    # Incremental builds fall back to a full rebuild past this share of deleted labels
    # (expired items since the last full build, whether or not a new item reused the slot).
    max_deleted_fraction: float = Field(0.2, ge=0, le=1)
    # ...and when more than this share of the items is new, expired or has a new vector:
    # an in-place update costs about as much as an insertion, so a full build is as cheap.
    max_changed_fraction: float = Field(0.3, ge=0, le=1)
    # New items take over deleted slots (hnswlib replace_deleted) instead of growing the
    # graph. On bounds memory; off by default because a reused slot is rewired in place
    # (nmslib/hnswlib#522) and a few new items are then not found by their own vector:
    # 2 of 400 in tests/test_index_incremental.py, none with fresh labels.
    reuse_deleted_slots: bool = False
    # Shards of a version: S > 1 partitions the snapshot by crc32(id) % S and builds one
    # graph per shard, all listed in one manifest and moved by one LATEST (a shard set,
    # served by `ebr serve --shard I/S` behind `ebr route`). 1 keeps the unsharded layout.
    shards: int = Field(1, ge=1, le=1024)


class ServingConfig(_Section):
    """The retrieval service (see `serving`)."""

    host: str = "127.0.0.1"
    port: int = Field(8090, ge=0, le=65535)
    # Optional bearer token; empty means no authentication.
    token: str = ""
    poll_interval_s: float = Field(5.0, gt=0)
    # Local cache of downloaded versions; empty means <repo>/var/serving-cache. Serving
    # large indexes, put it on tmpfs (/dev/shm/..., a memory-backed volume): writing a
    # 0.7 GB version to a disk-backed cache during a reload slowed the requests served
    # meanwhile (benchmarks/results/serving*.md). On tmpfs every cached version's files
    # take RAM (about the index size each; see keep_cached_versions).
    cache_dir: str = ""
    max_k: int = Field(1000, ge=1)
    default_k: int = Field(100, ge=1)
    max_body_bytes: int = Field(64 * 1024, ge=1024)
    # Versions kept in the local cache besides the served ones.
    keep_cached_versions: int = Field(2, ge=0)
    # Where an index version is loaded and searched. "process": in a child process per
    # version, so loading a new version never stalls requests; searches are pipelined on
    # the child's pipe (the event loop serves other requests while a child searches).
    # "inline": in the serving process, no pipe, but hnswlib holds the GIL for the whole
    # load of a new version (~1-2.5 s per million vectors), and every request waits.
    # benchmarks/results/serving.md measures both.
    searcher: Literal["inline", "process"] = "process"
    # Nice value added to the threads that download, verify and load a new version when
    # searcher = "process" (Linux: per thread), so a reload under load takes idle CPU
    # rather than the serving threads'. Not applied inline: there the load holds the GIL
    # and a slower load would stall requests longer.
    reload_nice: int = Field(10, ge=0, le=19)
    # True: the index process's loading thread (searcher = "process") also in Linux's
    # SCHED_IDLE class, so it runs only on cycles nothing else wants, where nice 10 still
    # takes about a tenth of a busy core (benchmarks/results/serving_reload_idle_ab.md).
    # Only that thread: hnswlib's load holds its own process's GIL, which nothing there
    # waits for, while an idle-class thread of the serving process holding the server's GIL
    # could stall its event loop. Off by default: on a machine whose cores other work keeps
    # busy, a new version then loads only as idle cycles come (about 0.3% of a core while
    # busy); with two training jobs on both cores here, a shard's load of a small test
    # version did not finish in 12 s. For a machine that serves and does nothing else.
    reload_idle: bool = False
    # A load that crashes (the index process dies, e.g. SIGSEGV on a graph whose checksums
    # are right; a MemoryError; a bug) is retried after load_retry_backoff_s, doubling per
    # crash up to load_retry_backoff_max_s; after max_load_crashes crashes the version is
    # refused (listed in /v1/versions) until the service restarts. Bad bytes are refused at once.
    max_load_crashes: int = Field(3, ge=1)
    load_retry_backoff_s: float = Field(1.0, gt=0)
    load_retry_backoff_max_s: float = Field(60.0, gt=0)
    # A client must send its headers, and then its body, within this many seconds each;
    # a slower one gets 408 and its connection closed (slow clients cannot pin connections).
    request_read_timeout_s: float = Field(10.0, gt=0)
    # The router (`ebr route`) answers only when at least this share of the shards answered
    # (the answer says its `coverage`); below it, 503. 1.0: every shard or nothing.
    min_coverage: float = Field(1.0, ge=0, le=1)
    # Shard servers keep this many versions of each collection loaded (the newest LATEST
    # named and the ones before it), so a router pinned to the previous shard set can
    # finish its requests while the other shards catch up.
    shard_keep_versions: int = Field(2, ge=1)
    # Shard servers also answer the router on the shard wire (`serving.wire`: framed binary
    # over TCP, same host as HTTP) on this port, advertised on /v1/shard: 0 picks a free
    # port, -1 turns it off (the router then asks over HTTP).
    shard_wire_port: int = Field(0, ge=-1, le=65535)


def _check_replica_urls(replicas: list[list[str]]) -> list[list[str]]:
    for shard, urls in enumerate(replicas):
        if not urls:
            raise ValueError(f"shard {shard} has no replica; every shard needs at least one URL")
        for url in urls:
            if not (url.startswith("http://") or url.startswith("https://")):
                raise ValueError(f"replica {url!r} of shard {shard} must be an http:// or https:// URL")
    return [[url.rstrip("/") for url in urls] for urls in replicas]


class ModelRouteConfig(_Section):
    """One more EBR model behind the router: its own artifact root and shard servers."""

    root: str
    replicas: list[list[str]]

    @field_validator("root")
    @classmethod
    def _root_is_supported(cls, root: str) -> str:
        if not (root.startswith("file:///") or root.startswith("gs://")):
            raise ValueError(f"artifact root {root!r} must be file:///absolute/path or gs://bucket/prefix")
        return root.rstrip("/")

    @field_validator("replicas")
    @classmethod
    def _replicas_are_urls(cls, replicas: list[list[str]]) -> list[list[str]]:
        if not replicas:
            raise ValueError("a model needs at least one shard's replica list")
        return _check_replica_urls(replicas)


class RouterConfig(_Section):
    """The shard router (`ebr route`, see `serving.router`)."""

    host: str = "127.0.0.1"
    port: int = Field(8091, ge=0, le=65535)
    # replicas[i] lists the base URLs of the replicas of shard i (e.g.
    # [["http://10.0.0.1:8090", "http://10.0.0.2:8090"], ["http://10.0.0.3:8090"]]); the
    # number of lists is the shard count every published set must have. A Kubernetes
    # headless Service or a DNS SRV record fills the same lists (README, "Running at scale").
    replicas: list[list[str]] = Field(default_factory=list)
    # Every request must be answered within this (fan-out, retries and merge included).
    deadline_ms: float = Field(200.0, gt=0)
    # A shard that has not answered after this long is asked again on another replica
    # (a hedge); an error or a refused connection retries at once.
    hedge_after_ms: float = Field(30.0, gt=0)
    # Attempts per shard and request, the first included (bounded by its replicas).
    max_attempts: int = Field(3, ge=1)
    # Replica health checks (GET /v1/shard: ready, shard I/S, versions held).
    health_interval_s: float = Field(0.5, gt=0)
    health_timeout_s: float = Field(1.0, gt=0)
    # Connections kept open per replica (HTTP; the wire multiplexes one).
    max_connections: int = Field(64, ge=1)
    # "wire": ask a shard server over the shard wire when its /v1/shard advertises a port,
    # over HTTP otherwise; "http": always HTTP (e.g. through an HTTP-only proxy).
    transport: Literal["wire", "http"] = "wire"
    # Where the router looks users up: "memory" (the user snapshot LATEST names, loaded
    # into the router) or "redis" (serving.profile_store: vectors keyed by snapshot
    # version, loaded by `ebr profiles load`, read per request).
    user_store: Literal["memory", "redis"] = "memory"
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_prefix: str = "ebr:users"

    # Several EBR models side by side (a candidate in shadow, an A/B split): the model of
    # `root` + `replicas` is called model_name; each entry of `models` is another, with its
    # own root (its own pipeline) and shard servers. A request picks one with ?model=NAME.
    model_name: str = Field("default", pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")
    models: dict[str, ModelRouteConfig] = Field(default_factory=dict)

    @field_validator("replicas")
    @classmethod
    def _replicas_are_urls(cls, replicas: list[list[str]]) -> list[list[str]]:
        return _check_replica_urls(replicas)

    @model_validator(mode="after")
    def _model_names(self) -> RouterConfig:
        for name in self.models:
            if not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,63}", name) or name == self.model_name:
                raise ValueError(
                    f"router.models name {name!r} must be lower-case letters, digits, '_' or '-' "
                    f"and differ from router.model_name={self.model_name!r}"
                )
        return self


class OrchestrationConfig(_Section):
    """What the Airflow tasks need (see `dags/` and `orchestration/`).

    The DAGs' schedules, start date and shape are Airflow settings, section `[ebr]`
    (`orchestration.dag_support.DagSettings`): a DAG file reads no configuration when parsed.
    """

    # Local folder for task working files (training logs, exports); empty means <repo>/var/work.
    workdir: str = ""


class EbrConfig(_Section):
    root: str
    store: StoreConfig = StoreConfig()
    gcs: GcsConfig = GcsConfig()
    world: WorldConfig = WorldConfig()
    features: FeatureConfig = FeatureConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    gate: GateConfig = GateConfig()
    embed: EmbedConfig = EmbedConfig()
    index: IndexConfig = IndexConfig()
    serving: ServingConfig = ServingConfig()
    router: RouterConfig = RouterConfig()
    orchestration: OrchestrationConfig = OrchestrationConfig()

    @field_validator("root")
    @classmethod
    def _root_is_supported(cls, root: str) -> str:
        if not (root.startswith("file:///") or root.startswith("gs://")):
            raise ValueError(f"artifact root {root!r} must be file:///absolute/path or gs://bucket/prefix")
        return root.rstrip("/")

    @property
    def warehouse_uri(self) -> str:
        return f"{self.root}/warehouse"


def load_config(
    config_file: str | os.PathLike[str] | None = None,
    overrides: Sequence[str] = (),
    environ: Mapping[str, str] | None = None,
) -> EbrConfig:
    """Builds the configuration from defaults, a file, `EBR_*` variables and overrides.

    Args:
      config_file: a TOML file layered over the defaults; `EBR_CONFIG` is used when None.
      overrides: `section.key=value` strings, applied last (values parse as JSON when
        they can, e.g. `world.seed=7`, else as plain strings).
      environ: the environment to read `EBR_*` from; `os.environ` when None.

    Raises:
      ConfigError: a file is missing or malformed, a key is unknown or a value invalid.
    """
    environ = os.environ if environ is None else environ
    layers: list[tuple[str, dict[str, Any]]] = [(str(DEFAULTS_FILE), _read_toml(DEFAULTS_FILE))]
    config_file = config_file or environ.get(f"{ENV_PREFIX}CONFIG")
    if config_file:
        layers.append((str(config_file), _read_toml(Path(config_file))))
    layers.append(("environment", _env_layer(environ)))
    layers.append(("--set", _override_layer(overrides)))

    merged: dict[str, Any] = {}
    for _, layer in layers:
        _deep_merge(merged, layer)
    merged["root"] = str(merged["root"]).replace("{repo}", str(REPO_DIR))
    try:
        return EbrConfig.model_validate(merged)
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']} (got {e.get('input')!r})" for e in err.errors()
        )
        sources = ", ".join(name for name, layer in layers if layer)
        raise ConfigError(f"invalid configuration ({problems}); layers read: {sources}") from None


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"config file {path} is not valid TOML: {err}") from None


def _env_layer(environ: Mapping[str, str]) -> dict[str, Any]:
    """`EBR_WORLD__SEED=7` becomes {"world": {"seed": 7}}; `EBR_ROOT` becomes {"root": ...}."""
    layer: dict[str, Any] = {}
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX) or name == f"{ENV_PREFIX}CONFIG":
            continue
        path = name[len(ENV_PREFIX) :].lower().split("__")
        _set_path(layer, path, _parse_value(value))
    return layer


def _override_layer(overrides: Sequence[str]) -> dict[str, Any]:
    layer: dict[str, Any] = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} must look like section.key=value")
        _set_path(layer, key.strip().split("."), _parse_value(value))
    return layer


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _set_path(target: dict[str, Any], path: list[str], value: Any) -> None:
    for key in path[:-1]:
        target = target.setdefault(key, {})
        if not isinstance(target, dict):
            raise ConfigError(f"cannot set {'.'.join(path)}: {key} is not a section")
    target[path[-1]] = value


def _deep_merge(base: dict[str, Any], layer: Mapping[str, Any]) -> None:
    for key, value in layer.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _deep_merge(base[key], value)
        else:
            base[key] = value
