"""A deterministic synthetic Spotlight world with known latent interests.

What is simulated (all vectorised with numpy; one day of events at a time):

- Topics with a skewed global popularity. Each topic owns a set of hashtags, a word for
  descriptions and a centroid in content-embedding space.
- Users in countries with languages; each user has a latent interest distribution over
  topics (Dirichlet, a few dominant topics) and an activity level (log-normal).
- Creators with a country/language, a focused topic distribution, a follower count and a
  productivity (Zipf): a few creators post most stories.
- Stories posted over time by creators: topic drawn from the creator's distribution,
  hashtags and content embedding carrying that topic (with noise), a latent quality, and
  an exposure weight (quality x creator reach x Pareto noise: a Zipf-like head). A story
  is shown only during `story_lifetime_days` after it is posted.
- Impressions: a user, a time, then a story drawn by exposure weight among live stories
  of a topic (the user's own interests with probability `interest_exposure`, else the
  global trend) and of the user's language (with probability `local_exposure`).
- Engagement from a latent score z = b_aff*log(affinity + 0.05) + b_lang*(same language
  - 1) + b_quality*quality + noise, where affinity is the user's interest in the story's
  topic relative to uniform. watch_ratio, view/skip and long_view follow from it;
  favorite, boost and share are Bernoulli draws of sigmoid(z - offset).

The oracle (`oracle_scores`) is z without noise: the ranking an ideal model would learn.
It is written under `warehouse/_truth/` so later stages can measure recall against it.

This module simulates the events and writes the tables; the population is drawn in
`warehouse.synthetic_world`, the engagement model and oracle live in `warehouse.ground_truth`.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pyarrow as pa
from tqdm.auto import tqdm

from config import WorldConfig
from warehouse.ground_truth import ENGAGEMENT, latent_score
from warehouse.synthetic_world import (
    AGE_BUCKETS,
    Clock,
    Creators,
    Ids,
    Stories,
    Topics,
    Users,
    WorldCounts,
    sample_rows,
)
from warehouse.tables import SECONDS_PER_DAY, Warehouse, day_start_ts


def generate_world(cfg: WorldConfig, warehouse: Warehouse, *, progress: bool = True) -> dict[str, Any]:
    """Generates the world described by `cfg` into `warehouse`; returns its summary.

    Deterministic: the same `cfg` (seed included) writes the same tables. Each entity
    draws from its own random stream (topics, users, creators, stories, then one per day),
    so the steps below may change without moving what another step draws.
    """
    started = time.perf_counter()
    counts = WorldCounts(
        users=cfg.count("n_users"),
        creators=cfg.count("n_creators"),
        stories=cfg.count("n_stories"),
        events=cfg.count("n_events"),
        days=cfg.count("days"),
    )
    streams = np.random.SeedSequence(cfg.seed).spawn(5 + counts.days)
    rng_topics, rng_users, rng_creators, rng_stories, rng_days = (np.random.default_rng(s) for s in streams[:5])
    clock = Clock.of(cfg, counts.days)

    topics = Topics.draw(rng_topics, cfg.n_topics, cfg.content_dim)
    users = Users.draw(rng_users, counts.users, topics, clock)
    creators = Creators.draw(rng_creators, counts.creators, topics, clock)
    stories = Stories.draw(rng_stories, counts.stories, cfg, topics, creators, clock)
    ids = Ids.of(counts)

    warehouse.clear()
    _write_entities(warehouse, ids, users, creators, stories, cfg.content_dim)
    written = _write_events(
        warehouse, cfg, counts, rng_days, streams[5:], clock, topics, users, stories, ids, progress=progress
    )
    _write_truth(warehouse, ids, topics, users, stories)
    summary = {
        "source": "synthetic",
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "config": cfg.model_dump(mode="json"),
        "counts": {
            "users": counts.users,
            "creators": counts.creators,
            "stories": counts.stories,
            "events": written,
            "days": counts.days,
        },
        "seconds": round(time.perf_counter() - started, 2),
    }
    warehouse.write_json("_SOURCE.json", summary)
    return summary


def _write_entities(
    warehouse: Warehouse, ids: Ids, users: Users, creators: Creators, stories: Stories, content_dim: int
) -> None:
    """The users, creators and stories tables."""
    warehouse.write_table(
        "users",
        pa.table(
            {
                "user_id": ids.users,
                "country": ids.countries.take(users.country),
                "language": ids.languages.take(users.language),
                "age_bucket": pa.array(AGE_BUCKETS).take(users.age),
                "account_created_ts": pa.array(users.created, pa.int64()),
            }
        ),
    )
    warehouse.write_table(
        "creators",
        pa.table(
            {
                "creator_id": ids.creators,
                "country": ids.countries.take(creators.country),
                "language": ids.languages.take(creators.language),
                "created_ts": pa.array(creators.created, pa.int64()),
                "follower_count": pa.array(creators.followers, pa.int64()),
            }
        ),
    )
    warehouse.write_table(
        "stories",
        pa.table(
            {
                "story_id": ids.stories,
                "creator_id": ids.creators.take(stories.creator),
                "created_ts": pa.array(stories.created, pa.int64()),
                "country": ids.countries.take(creators.country[stories.creator]),
                "language": ids.languages.take(stories.language),
                "duration_s": pa.array(stories.duration),
                "hashtags": _list_array(stories.hashtags, stories.hashtag_counts),
                "description": pa.array(stories.descriptions),
                "content_embedding": _list_array(
                    pa.array(stories.content.ravel()), np.full(len(stories.created), content_dim)
                ),
            }
        ),
    )


def _story_picker(stories: Stories, lifetime_s: float) -> _StoryPicker:
    """Exposure groups: (language, topic), (any language = -1, topic) and "everything"."""
    groups: dict[Any, np.ndarray] = {}
    order = np.lexsort((stories.topic, stories.language))
    for (lang, topic), members in _split_by(order, stories.language[order], stories.topic[order]):
        groups[(int(lang), int(topic))] = members
    order = np.argsort(stories.topic, kind="stable")
    for (topic,), members in _split_by(order, stories.topic[order]):
        groups[(-1, int(topic))] = members
    groups["everything"] = np.arange(len(stories.created))
    return _StoryPicker(stories.created.astype(np.float64), stories.weight, groups, lifetime_s)


def _write_events(
    warehouse: Warehouse,
    cfg: WorldConfig,
    counts: WorldCounts,
    rng_days: np.random.Generator,
    day_streams: list[np.random.SeedSequence],
    clock: Clock,
    topics: Topics,
    users: Users,
    stories: Stories,
    ids: Ids,
    *,
    progress: bool,
) -> int:
    """Impressions and engagement, one UTC day at a time; returns how many were written."""
    picker = _story_picker(stories, clock.lifetime_s)
    day_weights = np.array(
        [
            (1 + 0.01 * d) * (1.15 if (clock.start + timedelta(days=d)).weekday() >= 5 else 1.0)
            for d in range(counts.days)
        ]
    )
    per_day = rng_days.multinomial(counts.events, day_weights / day_weights.sum())
    activity = users.activity / users.activity.sum()
    written = 0
    for d in tqdm(range(counts.days), desc="events by day", unit="day", disable=not progress):
        rng = np.random.default_rng(day_streams[d])
        m = int(per_day[d])
        user = rng.choice(counts.users, size=m, p=activity)
        ts = day_start_ts(cfg.start_date + timedelta(days=d)) + rng.integers(0, SECONDS_PER_DAY, size=m)
        ts.sort()
        topic = np.where(
            rng.random(m) < cfg.interest_exposure,
            sample_rows(rng, users.interests, user),
            rng.choice(len(topics.names), size=m, p=topics.popularity),
        )
        language = np.where(rng.random(m) < cfg.local_exposure, users.language[user], -1)
        story = np.full(m, -1, dtype=np.int64)
        order = np.lexsort((topic, language))
        for (lang, top), idx in _split_by(order, language[order], topic[order]):
            story[idx] = picker.pick(rng, (int(lang), int(top)), ts[idx].astype(np.float64))
        missing = np.flatnonzero(story < 0)
        if len(missing):
            story[missing] = picker.pick(rng, "everything", ts[missing].astype(np.float64))
        keep = story >= 0
        user, ts, story = user[keep], ts[keep], story[keep]
        signals = _engagement(
            rng, users.interests, users.language, stories.topic, stories.language, stories.quality, user, story
        )
        warehouse.write_events(
            pa.table(
                {
                    "user_id": ids.users.take(user),
                    "story_id": ids.stories.take(story),
                    "ts": pa.array(ts, pa.int64()),
                    **{name: pa.array(values) for name, values in signals.items()},
                }
            )
        )
        written += len(user)
    return written


def _write_truth(warehouse: Warehouse, ids: Ids, topics: Topics, users: Users, stories: Stories) -> None:
    """The latent interests and qualities under `_truth/`, what `GroundTruth` reads back."""
    n_topics = len(topics.names)
    warehouse.write_parquet(
        "_truth/users.parquet",
        pa.table(
            {
                "user_id": ids.users,
                "language": ids.languages.take(users.language),
                "interests": _list_array(
                    pa.array(users.interests.astype(np.float32).ravel()), np.full(len(users.created), n_topics)
                ),
            }
        ),
    )
    warehouse.write_parquet(
        "_truth/stories.parquet",
        pa.table(
            {
                "story_id": ids.stories,
                "topic": pa.array(stories.topic.astype(np.int32)),
                "language": ids.languages.take(stories.language),
                "quality": pa.array(stories.quality.astype(np.float32)),
                "exposure_weight": pa.array(stories.weight.astype(np.float32)),
            }
        ),
    )
    warehouse.write_json(
        "_truth/world.json",
        {
            "topics": topics.names,
            "topic_popularity": topics.popularity.round(6).tolist(),
            "engagement": ENGAGEMENT,
            "n_topics": n_topics,
        },
    )


class _StoryPicker:
    """Draws stories by exposure weight among the live stories of a (language, topic) group.

    For each group, stories are kept sorted by posting time with a prefix sum of weights,
    so the live window [ts - lifetime, ts] is two binary searches and a draw is a third.
    Group (-1, topic) holds every language; group "everything" is the last fallback.
    """

    def __init__(self, created: np.ndarray, weights: np.ndarray, groups: dict[Any, np.ndarray], lifetime_s: float):
        self.lifetime_s = lifetime_s
        self.groups = {}
        for key, members in groups.items():
            members = members[np.argsort(created[members], kind="stable")]
            prefix = np.concatenate([[0.0], np.cumsum(weights[members])])
            self.groups[key] = (members, created[members], prefix)

    def pick(self, rng: np.random.Generator, key: Any, ts: np.ndarray) -> np.ndarray:
        """Story index per timestamp, or -1 where the group has no live story."""
        members, created, prefix = self.groups.get(key, (np.empty(0, int), np.empty(0), np.zeros(1)))
        hi = np.searchsorted(created, ts, side="right")
        lo = np.searchsorted(created, ts - self.lifetime_s, side="right")
        total = prefix[hi] - prefix[lo]
        target = prefix[lo] + rng.random(len(ts)) * total
        pos = np.clip(np.searchsorted(prefix, target, side="right") - 1, 0, max(len(members) - 1, 0))
        out = np.full(len(ts), -1, dtype=np.int64)
        ok = total > 0
        out[ok] = members[pos[ok]]
        return out


def _split_by(order: np.ndarray, *sorted_keys: np.ndarray):
    """Yields (key tuple, members of `order`) for each run of equal keys (keys sorted by `order`)."""
    if len(order) == 0:
        return
    change = np.zeros(len(order), dtype=bool)
    change[0] = True
    for keys in sorted_keys:
        change[1:] |= keys[1:] != keys[:-1]
    starts = np.flatnonzero(change)
    ends = np.append(starts[1:], len(order))
    for s, e in zip(starts, ends, strict=True):
        yield tuple(k[s] for k in sorted_keys), order[s:e]


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _list_array(values: pa.Array, lengths: np.ndarray) -> pa.ListArray:
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), values)


def _engagement(
    rng, user_interests, user_language, story_topic, story_language, story_quality, user, story
) -> dict[str, np.ndarray]:
    z = latent_score(user_interests, user_language, story_topic, story_language, story_quality, user, story)
    z = z + rng.normal(scale=ENGAGEMENT["noise_sd"], size=len(z))
    p = _sigmoid(z)
    rewatch = rng.random(len(z)) < _sigmoid(z - 2.5)
    watch_ratio = (p * (1.0 + rewatch * rng.uniform(0.0, 1.5, size=len(z)))).astype(np.float32)
    view = watch_ratio >= ENGAGEMENT["view_threshold"]
    return {
        "view": view,
        "long_view": watch_ratio >= ENGAGEMENT["long_view_threshold"],
        "boost": rng.random(len(z)) < _sigmoid(z - ENGAGEMENT["boost_offset"]),
        "favorite": rng.random(len(z)) < _sigmoid(z - ENGAGEMENT["favorite_offset"]),
        "share": rng.random(len(z)) < _sigmoid(z - ENGAGEMENT["share_offset"]),
        "skip": ~view,
        "watch_ratio": watch_ratio,
    }
