"""The Beam steps both embedding jobs share: read and validate, embed, write a snapshot.

    ReadRows          Parquet files -> Arrow batches -> (bucket, usable rows) + dead letters
    EmbedBatches      FeatureBatch -> EmbeddingBatch (the SavedModel is loaded once per
                      worker, in `setup`) + dead letters for NaN or wrong-size vectors
    WriteSnapshot     EmbeddingBatch -> Parquet shards in the run's attempt folder under
                      ROOT/<kind>/<snapshot>/ ->
                      MANIFEST.json, written last and only if the error rate allows

The snapshot's manifest is written by the pipeline itself, after every shard (a
Combine waits for all of them), so a job that dies halfway leaves an incomplete
version that nothing reads. Moving LATEST is left to the driver, after the run.

About 500 lines on purpose: every step both jobs share, read to write, in pipeline order.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.metrics import Metrics
from apache_beam.pvalue import AsDict, AsSingleton, TaggedOutput

from artifacts import MODELS, ArtifactStore
from artifacts.embedding_snapshots import shard_name, write_shard
from artifacts.errors import VersionExistsError
from artifacts.manifest import FileEntry
from artifacts.names import REFUSED
from beam_jobs.inputs import check_input_file
from beam_jobs.plan import JobPlan
from beam_jobs.records import (
    DeadLetter,
    EmbeddingBatch,
    FeatureBatch,
    RowRules,
    dead_letters_for_vectors,
    key_buckets,
    split_by_bucket,
    validate_rows,
)

log = logging.getLogger(__name__)

METRICS_NAMESPACE = "ebr"
DEAD_LETTER = "dead_letter"
ROWS_READ = "rows_read"
REFUSED_FILE = REFUSED  # written into the run's attempt instead of the manifest when the job refuses to publish
DEAD_LETTER_FILE = "dead_letter.jsonl"
DEAD_LETTER_SAMPLE = 10_000  # dead letters kept in the snapshot (all are counted)


# -- reading ------------------------------------------------------------------------------


class _ValidateAndBucket(beam.DoFn):
    """One Arrow batch -> (bucket, usable rows)..., dead letters, and the rows-read count."""

    def __init__(self, rules: RowRules, buckets: int, key_column: str, keep: Callable[[pa.Table], pa.Array] | None):
        self.rules, self.buckets, self.key_column, self.keep = rules, buckets, key_column, keep
        self.read = Metrics.counter(METRICS_NAMESPACE, f"{rules.source}_read")
        self.skipped = Metrics.counter(METRICS_NAMESPACE, f"{rules.source}_not_selected")

    def process(self, table: pa.Table):
        self.read.inc(len(table))
        yield TaggedOutput(ROWS_READ, (self.rules.source, len(table)))
        good, letters = validate_rows(table, self.rules)
        for letter in letters:
            yield TaggedOutput(DEAD_LETTER, letter)
        if self.keep is not None and len(good):
            selected = good.filter(self.keep(good))
            self.skipped.inc(len(good) - len(selected))
            good = selected
        yield from split_by_bucket(good, self.key_column, self.buckets)


class ReadRows(beam.PTransform):
    """Reads Parquet files as Arrow batches and keys the usable rows by bucket.

    Outputs (a DoOutputsTuple): the main output `(bucket, pa.Table)`; `dead_letter`:
    `DeadLetter`s; `rows_read`: `(source, number of rows)` for the error rate.

    Args:
      files: Beam-readable paths (local or gs://).
      rules: what a usable row looks like (`records.RowRules`).
      columns: the columns to read (None: all).
      buckets: number of key buckets; `key_column` says which id decides the bucket.
      keep: optional selection over usable rows (e.g. events before as-of): rows it
        drops are not errors, only not wanted by this run.
    """

    def __init__(
        self,
        files: list[str],
        rules: RowRules,
        *,
        columns: list[str] | None,
        buckets: int,
        key_column: str | None = None,
        keep=None,
    ):
        super().__init__()
        self.files, self.rules, self.columns, self.buckets = files, rules, columns, buckets
        self.key_column, self.keep = key_column or rules.id_column, keep

    def expand(self, pbegin):
        return (
            pbegin
            | "Files" >> beam.Create(self.files)
            | "CheckFiles" >> beam.Map(check_input_file, self.rules.source)
            | "ReadParquet" >> beam.io.ReadAllFromParquetBatched(columns=self.columns)
            | "Validate"
            >> beam.ParDo(_ValidateAndBucket(self.rules, self.buckets, self.key_column, self.keep)).with_outputs(
                DEAD_LETTER, ROWS_READ, main="rows"
            )
        )


class ConcatTables(beam.CombineFn):
    """All batches of a small table as one `pa.Table` (for side inputs)."""

    def __init__(self, schema: pa.Schema):
        self.schema = schema

    def create_accumulator(self):
        return []

    def add_input(self, tables, table):
        tables.append(table)
        return tables

    def merge_accumulators(self, accumulators):
        return [t for tables in accumulators for t in tables]

    def extract_output(self, tables):
        return pa.concat_tables(tables, promote_options="default") if tables else self.schema.empty_table()


def read_side_table(pipeline, label: str, files: list[str], rules: RowRules, schema: pa.Schema):
    """A small table (stories' references, creators) read whole, for a side input.

    Returns (the ReadRows outputs, for dead letters and counts; a one-element PCollection
    holding the usable rows as one `pa.Table`).
    """
    read = pipeline | f"Read{label}" >> ReadRows(files, rules, columns=schema.names, buckets=1)
    table = (
        read.rows | f"{label}Tables" >> beam.Values() | f"One{label}Table" >> beam.CombineGlobally(ConcatTables(schema))
    )
    return read, table


class CountDeadLetters(beam.DoFn):
    """Counts each dead letter as `<source>_dead_letters` and `<source>_dead_letters: <reason>`.

    Counted once, where every step's dead letters meet, so the counters are the manifest's
    `dead_letters` and `dead_letter_reasons` (counting in each step that makes them missed
    the ones the features steps make: unknown users, duplicate ids).
    """

    def __init__(self):
        self.counters = {}

    def process(self, letter: DeadLetter):
        for name in (f"{letter.source}_dead_letters", f"{letter.source}_dead_letters: {letter.reason}"):
            if name not in self.counters:
                self.counters[name] = Metrics.counter(METRICS_NAMESPACE, name)
            self.counters[name].inc()
        yield letter


def gather_bookkeeping(reads, steps):
    """(every dead letter of the run, counted; every (source, rows read)) as two PCollections.

    `reads` are ReadRows outputs (dead letters and counts); `steps` are other multi-output
    ParDos with a dead-letter output.
    """
    dead_letters = (
        tuple(r[DEAD_LETTER] for r in (*reads, *steps))
        | "AllDeadLetters" >> beam.Flatten()
        | "CountDeadLetters" >> beam.ParDo(CountDeadLetters())
    )
    rows_read = tuple(r.rows_read for r in reads) | "AllRowsRead" >> beam.Flatten()
    return dead_letters, rows_read


def concat_or_empty(tables: Iterable[pa.Table], schema: pa.Schema) -> pa.Table:
    tables = [t for t in tables if len(t)]
    return pa.concat_tables(tables, promote_options="default") if tables else schema.empty_table()


def drop_duplicate_ids(table: pa.Table, column: str, source: str) -> tuple[pa.Table, list[DeadLetter]]:
    """Keeps the first row of each id; later rows become dead letters."""
    if pc.count_distinct(table[column]).as_py() == len(table):
        return table, []
    ids = table[column].to_pylist()
    seen: set[str] = set()
    first = []
    letters = []
    for row, value in enumerate(ids):
        if value in seen:
            letters.append(DeadLetter(source, value, f"duplicate {column}"))
        else:
            seen.add(value)
            first.append(row)
    return (table if not letters else table.take(pa.array(first, type=pa.int64()))), letters


# -- inference ------------------------------------------------------------------------------


def load_tower(plan: JobPlan):
    """The plan's tower as a `models.tower_runner.TowerRunner`, from the store (verified).

    Runs in a worker's `setup()`: once per worker (per DoFn instance), never per element.
    """
    # TFRS and our SavedModels need Keras 2; this must precede the first TensorFlow import
    # in this (worker) process.
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    from models.tower_runner import TowerRunner

    if plan.model_local_dir and Path(plan.model_local_dir, plan.tower).is_dir():
        return TowerRunner(Path(plan.model_local_dir) / plan.tower)
    cache = Path(tempfile.mkdtemp(prefix="ebr-model-"))  # one per worker: no download races
    local = ArtifactStore.from_config(plan.cfg).kind(MODELS).download(plan.model_version, cache)
    return TowerRunner(local / plan.tower)


class EmbedBatches(beam.DoFn):
    """FeatureBatch -> EmbeddingBatch through the plan's tower (dead letters: bad vectors)."""

    def __init__(self, plan: JobPlan, source: str):
        self.plan, self.source = plan, source
        self.embedded = Metrics.counter(METRICS_NAMESPACE, f"{source}_embedded")
        self.batches = Metrics.distribution(METRICS_NAMESPACE, "inference_batch_size")
        self.tower = None

    def setup(self):
        self.tower = load_tower(self.plan)

    def process(self, batch: FeatureBatch):
        if not len(batch):
            return
        self.batches.update(len(batch))
        vectors = self.tower(batch.features, batch_size=self.plan.cfg.embed.batch_size)
        usable, letters = dead_letters_for_vectors(batch.ids, vectors, self.plan.output_dim, self.source)
        for letter in letters:
            yield TaggedOutput(DEAD_LETTER, letter)
        if usable.any():
            self.embedded.inc(int(usable.sum()))
            yield EmbeddingBatch(
                batch.ids[usable], vectors[usable], None if batch.group is None else batch.group[usable]
            )


def embed_per_bucket(label: str, plan: JobPlan, reads: tuple, features: beam.DoFn, tower: str, **side_inputs):
    """The middle of both jobs: group per bucket, build features, embed, gather bookkeeping.

    `reads[0]` (the entity's rows) and `reads[1]` (events), keyed by bucket, are grouped as
    `{tower: ..., "events": ...}` (step `GroupPer<label>`); `features` (a DoFn, with
    `side_inputs`) turns each bucket into FeatureBatches (`<label>Features`), the `tower`'s
    model embeds them (`<label>Tower`). Returns (embeddings, every dead letter of `reads`
    and both steps, counted; the rows read per source) as PCollections.
    """
    featured = (
        {tower: reads[0].rows, "events": reads[1].rows}
        | f"GroupPer{label}" >> beam.CoGroupByKey()
        | f"{label}Features" >> beam.ParDo(features, **side_inputs).with_outputs(DEAD_LETTER, main="batches")
    )
    embedded = featured.batches | f"{label}Tower" >> beam.ParDo(EmbedBatches(plan, tower)).with_outputs(
        DEAD_LETTER, main="embeddings"
    )
    dead_letters, rows_read = gather_bookkeeping(reads, (featured, embedded))
    return embedded.embeddings, dead_letters, rows_read


def feature_batches(
    ids: np.ndarray,
    build: Callable[[np.ndarray], dict[str, np.ndarray]],
    batch_size: int,
    group: np.ndarray | None = None,
):
    """FeatureBatches of at most `batch_size` rows: `build(rows)` makes the features."""
    for start in range(0, len(ids), batch_size):
        rows = np.arange(start, min(start + batch_size, len(ids)))
        yield FeatureBatch(ids[rows], build(rows), None if group is None else group[rows])


# -- creators: the direction of their stories ---------------------------------------------


def sum_by_key(keys: np.ndarray, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(distinct keys [c], float64 sums of their rows of `vectors` [c, dim], row counts [c]).

    Sort and `np.add.reduceat` (one pass over contiguous runs): `np.add.at` is an
    order of magnitude slower for this.
    """
    order = np.argsort(keys, kind="stable")
    keys, vectors = keys[order], np.asarray(vectors, dtype=np.float64)[order]
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]]) if len(keys) else np.zeros(0, np.int64)
    sums = np.add.reduceat(vectors, starts, axis=0) if len(keys) else np.zeros((0, vectors.shape[1]))
    return keys[starts], sums, np.diff(np.r_[starts, len(keys)])


def creator_partial_sums(batch: EmbeddingBatch, buckets: int):
    """(bucket, (creator ids [c], sums of their story vectors [c, dim], counts [c])) for the
    creators of one batch, one element per creator bucket (arrays, not one per creator)."""
    creators, sums, counts = sum_by_key(batch.group.astype(str), batch.vectors)
    bucket = key_buckets(creators.tolist(), buckets)
    for b in np.unique(bucket):
        rows = bucket == b
        yield int(b), (creators[rows], sums[rows], counts[rows])


def creator_embeddings(element) -> EmbeddingBatch:
    """The creators of one bucket: the L2-normalised mean of each one's story embeddings.

    Normalising the sum gives the same direction as normalising the mean.
    """
    _bucket, parts = element
    parts = list(parts)
    creators, sums, _ = sum_by_key(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
    norms = np.linalg.norm(sums, axis=1, keepdims=True)
    vectors = np.divide(sums, norms, out=np.zeros_like(sums), where=norms > 0).astype(np.float32)
    return EmbeddingBatch(creators.astype(object), vectors)


# -- writing --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShardEntry:
    name: str
    size: int
    sha256: str
    count: int


def split_by_shard(batch: EmbeddingBatch, shards: int):
    """(shard, rows of the batch in that shard): a row's shard depends only on its id."""
    shard = key_buckets(pa.array(batch.ids, type=pa.string()), shards)
    for s in np.unique(shard):
        rows = np.flatnonzero(shard == s)
        yield int(s), EmbeddingBatch(batch.ids[rows], batch.vectors[rows])


class _WriteShard(beam.DoFn):
    """Writes one Parquet shard, sorted by id, into the run's attempt (staging) folder."""

    def __init__(self, plan: JobPlan, kind: str):
        self.plan, self.kind_name = plan, kind
        self.staging = None

    def setup(self):
        # The run's own attempt: no other run on this snapshot name writes where it does.
        kind = ArtifactStore.from_config(self.plan.cfg).kind(self.kind_name)
        self.staging = kind.new_version(self.plan.snapshot, attempt=self.plan.attempt)

    def process(self, element):
        shard, batches = element
        batches = list(batches)
        ids = np.concatenate([b.ids for b in batches])
        vectors = np.concatenate([b.vectors for b in batches])
        order = np.argsort(ids.astype(str), kind="stable")
        name = shard_name(shard, self.plan.cfg.embed.shards)
        data = write_shard(ids[order], vectors[order])
        # A retried bundle rewrites the same bytes under the same name: idempotent.
        entry = self.staging.add_bytes(name, data)
        yield ShardEntry(name, entry.size, entry.sha256, len(ids))


def error_rates(read: dict[str, int], dead: dict[str, int]) -> dict[str, float]:
    """Dead letters / rows read, per source that read anything."""
    return {source: dead.get(source, 0) / n for source, n in sorted(read.items()) if n}


def dead_letter_reasons(counts: dict[tuple[str, str], int]) -> dict[str, dict[str, int]]:
    """{(source, reason): n} as {source: {reason: n}}, sorted."""
    out: dict[str, dict[str, int]] = {}
    for (source, reason), n in sorted(counts.items()):
        out.setdefault(source, {})[reason] = n
    return out


def commit_snapshot(
    entries: list[ShardEntry],
    plan: JobPlan,
    kind_name: str,
    parents: dict,
    params: dict,
    read: dict[str, int],
    dead: dict[str, int],
    dead_sample: list[DeadLetter],
    dead_reasons: dict[tuple[str, str], int] | None = None,
) -> None:
    """Writes the dead-letter sample, then the manifest, or `_REFUSED.json` saying why not."""
    kind = ArtifactStore.from_config(plan.cfg).kind(kind_name)
    if kind.is_complete(plan.snapshot):
        return  # a retried step after a successful commit
    writer = kind.new_version(
        plan.snapshot,
        parents=parents,
        params=params,
        created_by=f"beam_jobs:{plan.entity}:{plan.run_id or 'manual'}",
        attempt=plan.attempt,
    )
    if dead_sample:
        lines = "".join(letter.to_json() + "\n" for letter in dead_sample[:DEAD_LETTER_SAMPLE])
        writer.add_bytes(DEAD_LETTER_FILE, lines.encode())
    rates = error_rates(read, dead)
    limit = plan.cfg.embed.max_error_rate
    refusals = [
        f"{source}: {dead.get(source, 0)} of {read[source]} records dead-lettered ({rate:.2%} > embed.max_error_rate {limit:.2%})"
        for source, rate in rates.items()
        if rate > limit
    ]
    if not entries:
        refusals.append(f"no {plan.entity} to embed as of {plan.as_of_iso}")
    if refusals:
        body = {
            "refused": refusals,
            "rows_read": read,
            "dead_letters": dead,
            "dead_letter_reasons": dead_letter_reasons(dead_reasons or {}),
            "dead_letter_file": DEAD_LETTER_FILE if dead_sample else None,
        }
        writer.refuse(body)
        return
    for entry in sorted(entries, key=lambda e: e.name):
        writer.register(entry.name, FileEntry(entry.size, entry.sha256))
    writer.metrics.update(
        {
            "count": sum(e.count for e in entries),
            "rows_read": dict(sorted(read.items())),
            "dead_letters": dict(sorted(dead.items())),
            "dead_letter_reasons": dead_letter_reasons(dead_reasons or {}),
            "error_rates": {k: round(v, 6) for k, v in rates.items()},
        }
    )
    try:
        writer.commit()
    except VersionExistsError:  # another run on this snapshot name committed first; the driver verifies it
        log.warning(
            "%s/%s was committed by another run meanwhile; this run's shards are discarded", kind_name, plan.snapshot
        )


class WriteSnapshot(beam.PTransform):
    """EmbeddingBatches -> shards -> manifest (if the error rate allows).

    Args:
      plan: the run; its `snapshot` is the version name.
      kind: "embeddings/users", "embeddings/stories" or "embeddings/creators".
      rows_read: PCollection of (source, n) from every ReadRows.
      dead_letters: PCollection of every DeadLetter of the run.
      parents, params: the manifest's (model_version and as_of are added).
    """

    def __init__(
        self, plan: JobPlan, kind: str, rows_read, dead_letters, parents: dict | None = None, params: dict | None = None
    ):
        super().__init__()
        self.plan, self.kind, self.rows_read, self.dead_letters = plan, kind, rows_read, dead_letters
        self.parents = {"model_version": plan.model_version, **(parents or {})}
        self.params = {
            "dim": plan.output_dim,
            "as_of": plan.as_of,
            "as_of_iso": plan.as_of_iso,
            "tower": plan.tower,
            **(params or {}),
        }

    def expand(self, batches):
        shards = self.plan.cfg.embed.shards
        entries = (
            batches
            | "ByShard" >> beam.FlatMap(split_by_shard, shards)
            | "GroupShard" >> beam.GroupByKey()
            | "WriteShard" >> beam.ParDo(_WriteShard(self.plan, self.kind))
        )
        read = self.rows_read | "SumRead" >> beam.CombinePerKey(sum)
        dead = (
            self.dead_letters
            | "DeadBySource" >> beam.Map(lambda d: (d.source, 1))
            | "SumDead" >> beam.CombinePerKey(sum)
        )
        reasons = (
            self.dead_letters
            | "DeadByReason" >> beam.Map(lambda d: ((d.source, d.reason), 1))
            | "SumReasons" >> beam.CombinePerKey(sum)
        )
        sample = self.dead_letters | "SampleDead" >> beam.combiners.Sample.FixedSizeGlobally(DEAD_LETTER_SAMPLE)
        return (
            entries
            | "AllShards" >> beam.combiners.ToList()
            | "Commit"
            >> beam.Map(
                commit_snapshot,
                self.plan,
                self.kind,
                self.parents,
                self.params,
                read=AsDict(read),
                dead=AsDict(dead),
                dead_sample=AsSingleton(sample),
                dead_reasons=AsDict(reasons),
            )
        )
