"""Story-tower inference for the stories still eligible for retrieval, and creators.

    stories (created in [as_of - max_age, as_of)) ─► validate ─► bucket(story_id) ─┐
                                                                                   ├─ CoGroupByKey ─► features ─► story tower ─┬─► stories snapshot
    events of the last max_age days (ts < as_of) ─► validate ─► bucket(story_id) ──┘   ▲ side input: creators     │
                                                                                                                  └─► creators snapshot

A short video is only worth retrieving while it is fresh (`embed.story_max_age_days`),
so the job embeds those stories only and reads only the event partitions they can have
events in, which keeps a frequent run cheap. Every event of a story lands in the
story's bucket, and features are built with the training code (`models.features`).

**Creators** are embedded in the same space as stories: a creator's vector is the
L2-normalised mean of the story-tower embeddings of their eligible stories. Why this
and not a creator tower: the model has no creator tower to train, the mean direction of
a creator's stories is what a user-to-creator dot product should match (the user tower
was trained against those very story vectors), and it moves as the creator posts. A
creator with no eligible story gets no vector: they have nothing fresh to recommend.

    python -m beam_jobs.story_embeddings --root=file:///abs/var/ebr
    python -m beam_jobs.story_embeddings --root=gs://bucket/ebr --runner=DataflowRunner \\
        --project=PROJECT --region=REGION --temp_location=gs://bucket/tmp --setup_file=./setup.py
"""

from __future__ import annotations

import sys

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.pvalue import AsSingleton, TaggedOutput

from artifacts import CREATOR_EMBEDDINGS, STORY_EMBEDDINGS
from beam_jobs.driver import JobOutcome, main, run_pipeline
from beam_jobs.options import StoryEmbeddingOptions
from beam_jobs.plan import JobPlan, job_config, resolve_plan, with_configured_runner
from beam_jobs.records import RowRules, list_size_check
from beam_jobs.transforms import (
    DEAD_LETTER,
    METRICS_NAMESPACE,
    ReadRows,
    WriteSnapshot,
    concat_or_empty,
    creator_embeddings,
    creator_partial_sums,
    drop_duplicate_ids,
    embed_per_bucket,
    feature_batches,
    read_side_table,
)
from beam_jobs.user_embeddings import EVENT_COLUMNS, EVENT_RULES, EVENTS_SCHEMA, before
from models.features import Catalog, EventHistory, story_features
from warehouse.schema import arrow_schema

STORY_COLUMNS = [
    "story_id",
    "creator_id",
    "created_ts",
    "country",
    "language",
    "duration_s",
    "hashtags",
    "content_embedding",
]
CREATOR_COLUMNS = ["creator_id", "follower_count"]
_stories, _creators = arrow_schema("stories"), arrow_schema("creators")
STORIES_SCHEMA = pa.schema([_stories.field(c) for c in STORY_COLUMNS])
CREATORS_SCHEMA = pa.schema([_creators.field(c) for c in CREATOR_COLUMNS])
CREATOR_RULES = RowRules("creators", "creator_id", {c: _creators.field(c).type for c in CREATOR_COLUMNS})


def story_rules(content_dim: int) -> RowRules:
    """A usable story: typed columns, no nulls (but duration), a content embedding of the
    model's size with finite values."""
    return RowRules(
        "stories",
        "story_id",
        {c: _stories.field(c).type for c in STORY_COLUMNS},
        row_checks=(list_size_check("content_embedding", content_dim),),
        nullable=frozenset({"duration_s"}),
    )


def eligible(as_of: int, max_age_days: float):
    """Row selection: stories posted in [as_of - max_age, as_of)."""
    oldest = int(as_of - max_age_days * 86_400)
    return lambda stories: pc.and_(
        pc.greater_equal(stories["created_ts"], oldest), pc.less(stories["created_ts"], as_of)
    )


class StoryFeaturesForBucket(beam.DoFn):
    """(bucket, {"stories": [...], "events": [...]}) -> FeatureBatches (group: creator ids).

    Events of stories that are not eligible in this run are not errors (an old story
    still gets impressions); they are only counted.
    """

    def __init__(self, plan: JobPlan):
        self.plan = plan
        self.other_events = Metrics.counter(METRICS_NAMESPACE, "events_of_ineligible_stories")

    def process(self, element, creators: pa.Table):
        _bucket, grouped = element
        stories, letters = drop_duplicate_ids(
            concat_or_empty(grouped["stories"], STORIES_SCHEMA), "story_id", "stories"
        )
        for letter in letters:
            yield TaggedOutput(DEAD_LETTER, letter)
        events = concat_or_empty(grouped["events"], EVENTS_SCHEMA)
        if not len(stories):
            self.other_events.inc(len(events))
            return
        ours = pc.is_in(events["story_id"], value_set=stories["story_id"])
        self.other_events.inc(len(events) - pc.sum(ours).as_py() if len(events) else 0)
        catalog = Catalog.from_tables(None, stories, creators, self.plan.features)
        history = EventHistory.from_tables([events.filter(ours)], catalog, self.plan.features, users_known=False)
        as_of = np.full(len(stories), self.plan.as_of, dtype=np.int64)
        yield from feature_batches(
            catalog.story_ids,
            lambda rows: story_features(history, rows, as_of[rows]),
            self.plan.cfg.embed.batch_size,
            group=catalog.story_creator,
        )


def build_pipeline(pipeline: beam.Pipeline, plan: JobPlan, max_age_days: float) -> None:
    """The story (and creator) dataflow on `pipeline`: read, group per story, embed, write."""
    buckets = plan.cfg.embed.buckets
    stories = pipeline | "ReadStories" >> ReadRows(
        plan.files["stories"],
        story_rules(plan.content_dim),
        columns=STORY_COLUMNS,
        buckets=buckets,
        keep=eligible(plan.as_of, max_age_days),
    )
    events = pipeline | "ReadEvents" >> ReadRows(
        plan.files["events"],
        EVENT_RULES,
        columns=EVENT_COLUMNS,
        buckets=buckets,
        key_column="story_id",
        keep=before(plan.as_of),
    )
    creators, creator_table = read_side_table(
        pipeline, "Creators", plan.files["creators"], CREATOR_RULES, CREATORS_SCHEMA
    )

    embeddings, dead_letters, rows_read = embed_per_bucket(
        "Story",
        plan,
        (stories, events, creators),
        StoryFeaturesForBucket(plan),
        "stories",
        creators=AsSingleton(creator_table),
    )
    params = {"story_max_age_days": max_age_days}
    _ = embeddings | "WriteStorySnapshot" >> WriteSnapshot(
        plan, STORY_EMBEDDINGS, rows_read, dead_letters, params=params
    )

    creator_vectors = (
        embeddings
        | "CreatorSums" >> beam.FlatMap(creator_partial_sums, buckets)
        | "GroupPerCreator" >> beam.GroupByKey()
        | "CreatorVectors" >> beam.Map(creator_embeddings)
    )
    creator_params = {**params, "creator_vector": "L2-normalised mean of the creator's eligible story embeddings"}
    _ = creator_vectors | "WriteCreatorSnapshot" >> WriteSnapshot(
        plan,
        CREATOR_EMBEDDINGS,
        rows_read,
        dead_letters,
        parents={"story_snapshot": plan.snapshot},
        params=creator_params,
    )


def run(argv: list[str] | None = None) -> list[JobOutcome]:
    """Embeds the eligible stories and their creators as of `--as_of`, and publishes both."""
    cfg = job_config(PipelineOptions(argv))
    options = with_configured_runner(argv, cfg)
    max_age = options.view_as(StoryEmbeddingOptions).story_max_age_days or cfg.embed.story_max_age_days
    # Eligible stories were posted after as_of - max_age: their events are all in these days.
    plan = resolve_plan(cfg, options, "stories", lookback_days=max_age)
    return run_pipeline(
        options, plan, [STORY_EMBEDDINGS, CREATOR_EMBEDDINGS], lambda pipeline, p: build_pipeline(pipeline, p, max_age)
    )


if __name__ == "__main__":
    main(run, sys.argv[1:])
