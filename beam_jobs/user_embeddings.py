"""User-tower inference: every user, as of a time, into an embedding snapshot.

    users ──► validate ──► bucket(user_id) ─┐
                                            ├─ CoGroupByKey ─► features (models.features) ─► user tower ─► shards ─► MANIFEST
    events (ts < as_of) ─► validate ─► bucket(user_id) ─┘        ▲ side input: stories (id, creator, hashtags)

Every event of a user lands in the user's bucket, so each bucket holds complete
histories and features are built with the training code (`models.features`), batch by
batch: no training/serving skew. Run it locally or on a distributed runner by flags:

    python -m beam_jobs.user_embeddings --root=file:///abs/var/ebr
    python -m beam_jobs.user_embeddings --root=file:///abs/var/ebr \\
        --direct_running_mode=multi_processing --direct_num_workers=2
    python -m beam_jobs.user_embeddings --root=gs://bucket/ebr --runner=DataflowRunner \\
        --project=PROJECT --region=REGION --temp_location=gs://bucket/tmp \\
        --setup_file=./setup.py --experiments=use_runner_v2
"""

from __future__ import annotations

import json
import sys

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.pvalue import AsSingleton, TaggedOutput

from artifacts import USER_EMBEDDINGS
from beam_jobs.driver import JobOutcome, main, run_pipeline
from beam_jobs.options import UserEmbeddingOptions
from beam_jobs.plan import JobPlan, job_config, resolve_plan, with_configured_runner
from beam_jobs.records import DeadLetter, RowRules
from beam_jobs.transforms import (
    DEAD_LETTER,
    METRICS_NAMESPACE,
    ReadRows,
    WriteSnapshot,
    concat_or_empty,
    drop_duplicate_ids,
    embed_per_bucket,
    feature_batches,
    read_side_table,
)
from models.features import Catalog, EventHistory, user_features
from warehouse.schema import EVENT_SIGNALS, arrow_schema

USER_COLUMNS = ["user_id", "country", "language", "age_bucket", "account_created_ts"]
# What user features read of a story: its id, creator and hashtags (never its content).
STORY_REFERENCE_COLUMNS = ["story_id", "creator_id", "created_ts", "country", "language", "duration_s", "hashtags"]
EVENT_COLUMNS = ["user_id", "story_id", "ts", *EVENT_SIGNALS, "watch_ratio"]

_schema = {
    name: arrow_schema(table) for name, table in (("users", "users"), ("stories", "stories"), ("events", "events"))
}
USER_RULES = RowRules("users", "user_id", {c: _schema["users"].field(c).type for c in USER_COLUMNS})
STORY_REFERENCE_RULES = RowRules(
    "stories",
    "story_id",
    {c: _schema["stories"].field(c).type for c in STORY_REFERENCE_COLUMNS},
    nullable=frozenset({"duration_s"}),
)
EVENT_RULES = RowRules("events", "user_id", {c: _schema["events"].field(c).type for c in EVENT_COLUMNS})
USERS_SCHEMA = pa.schema([_schema["users"].field(c) for c in USER_COLUMNS])
STORY_REFERENCE_SCHEMA = pa.schema([_schema["stories"].field(c) for c in STORY_REFERENCE_COLUMNS])
EVENTS_SCHEMA = pa.schema([_schema["events"].field(c) for c in EVENT_COLUMNS])
# User features never read creators (follower counts are a story feature).
NO_CREATORS = pa.table({"creator_id": pa.array([], pa.string()), "follower_count": pa.array([], pa.int64())})


def before(as_of: int):
    """Row selection: events strictly before as-of (later ones are the future)."""
    return lambda events: pc.less(events["ts"], as_of)


class UserFeaturesForBucket(beam.DoFn):
    """(bucket, {"users": [...], "events": [...]}) -> FeatureBatches of the bucket's users.

    Events of users missing from the users table, or of stories missing from the
    stories table, are dead letters; duplicate user ids too (the first row is kept).
    """

    def __init__(self, plan: JobPlan):
        self.plan = plan
        self.users_without_events = Metrics.counter(METRICS_NAMESPACE, "users_without_events")
        self._stories_key = None
        self._story_rows: dict[str, int] = {}

    def _story_index(self, stories: pa.Table) -> dict[str, int]:
        # The side input is the same table for the whole run: index it once per worker.
        key = (len(stories), stories["story_id"][0].as_py() if len(stories) else None)
        if key != self._stories_key:
            self._story_rows = {s: i for i, s in enumerate(stories["story_id"].to_pylist())}
            self._stories_key = key
        return self._story_rows

    def process(self, element, stories: pa.Table):
        _bucket, grouped = element
        users, letters = drop_duplicate_ids(concat_or_empty(grouped["users"], USERS_SCHEMA), "user_id", "users")
        events = concat_or_empty(grouped["events"], EVENTS_SCHEMA)
        story_rows = self._story_index(stories)

        known_user = pc.is_in(events["user_id"], value_set=users["user_id"]).to_numpy(zero_copy_only=False)
        # Look the bucket's distinct stories up in the run's story index, then map rows.
        distinct = pc.unique(events["story_id"])
        distinct_rows = np.fromiter((story_rows.get(s, -1) for s in distinct.to_pylist()), np.int64, len(distinct))
        story_row = (
            distinct_rows[pc.index_in(events["story_id"], value_set=distinct).to_numpy(zero_copy_only=False)]
            if len(events)
            else np.zeros(0, np.int64)
        )
        usable = known_user & (story_row >= 0)
        for row in np.flatnonzero(~usable):
            reason = (
                "event of a user missing from the users table"
                if not known_user[row]
                else "event of a story missing from the stories table"
            )
            record = json.dumps({"story_id": events["story_id"][row].as_py(), "ts": events["ts"][row].as_py()})
            letters.append(DeadLetter("events", events["user_id"][row].as_py(), reason, record))
        for letter in letters:
            yield TaggedOutput(DEAD_LETTER, letter)
        if not len(users):
            return
        events = events.filter(pa.array(usable))
        needed = np.unique(story_row[usable])
        catalog = Catalog.from_tables(
            users, stories.take(pa.array(needed, type=pa.int64())), NO_CREATORS, self.plan.features
        )
        history = EventHistory.from_tables([events], catalog, self.plan.features)
        self.users_without_events.inc(len(users) - len(np.unique(history.user)))
        as_of = np.full(len(users), self.plan.as_of, dtype=np.int64)
        yield from feature_batches(
            catalog.user_ids, lambda rows: user_features(history, rows, as_of[rows]), self.plan.cfg.embed.batch_size
        )


def build_pipeline(pipeline: beam.Pipeline, plan: JobPlan) -> None:
    """The user dataflow on `pipeline` (any runner): read, group per user, embed, write."""
    buckets = plan.cfg.embed.buckets
    users = pipeline | "ReadUsers" >> ReadRows(plan.files["users"], USER_RULES, columns=USER_COLUMNS, buckets=buckets)
    events = pipeline | "ReadEvents" >> ReadRows(
        plan.files["events"], EVENT_RULES, columns=EVENT_COLUMNS, buckets=buckets, keep=before(plan.as_of)
    )
    stories, story_table = read_side_table(
        pipeline, "Stories", plan.files["stories"], STORY_REFERENCE_RULES, STORY_REFERENCE_SCHEMA
    )

    embeddings, dead_letters, rows_read = embed_per_bucket(
        "User", plan, (users, events, stories), UserFeaturesForBucket(plan), "users", stories=AsSingleton(story_table)
    )
    _ = embeddings | "WriteUserSnapshot" >> WriteSnapshot(plan, USER_EMBEDDINGS, rows_read, dead_letters)


def run(argv: list[str] | None = None) -> list[JobOutcome]:
    """Embeds every user as of `--as_of` and publishes the snapshot; see the module doc."""
    cfg = job_config(PipelineOptions(argv))
    options = with_configured_runner(argv, cfg)
    lookback = options.view_as(UserEmbeddingOptions).user_lookback_days or cfg.embed.user_lookback_days
    plan = resolve_plan(cfg, options, "users", lookback_days=lookback)
    return run_pipeline(options, plan, [USER_EMBEDDINGS], build_pipeline)


if __name__ == "__main__":
    main(run, sys.argv[1:])
