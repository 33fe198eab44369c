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
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pyarrow as pa
from tqdm.auto import tqdm

from config import WorldConfig
from warehouse.tables import SECONDS_PER_DAY, Warehouse, day_start_ts

# (country, primary language, share of users)
COUNTRIES = (
    ("US", "en", 0.27),
    ("GB", "en", 0.07),
    ("IN", "hi", 0.12),
    ("BR", "pt", 0.11),
    ("MX", "es", 0.09),
    ("ES", "es", 0.05),
    ("FR", "fr", 0.09),
    ("DE", "de", 0.09),
    ("JP", "ja", 0.11),
)
LANGUAGES = tuple(sorted({lang for _, lang, _ in COUNTRIES}))
# Share of people in a non-English country whose app language is English.
ENGLISH_SECOND_LANGUAGE = 0.1
AGE_BUCKETS = ("13-17", "18-24", "25-34", "35-44", "45-54", "55+")
AGE_SHARES = (0.12, 0.34, 0.27, 0.14, 0.08, 0.05)
TOPIC_WORDS = (
    "comedy",
    "dance",
    "pets",
    "food",
    "sports",
    "music",
    "fashion",
    "gaming",
    "travel",
    "diy",
    "beauty",
    "science",
    "cars",
    "art",
    "fitness",
    "memes",
    "news",
    "education",
    "nature",
    "movies",
    "tech",
    "family",
    "pranks",
    "asmr",
    "anime",
    "skate",
    "football",
    "basketball",
    "cooking",
    "magic",
    "history",
    "photography",
)
GENERIC_TAGS = ("fyp", "viral", "spotlight", "trending")
ADJECTIVES = ("funny", "epic", "cute", "quick", "daily", "best", "wild", "new", "crazy", "easy")
NOUNS = ("moment", "clip", "challenge", "tutorial", "story", "vibes", "fail", "hack", "recap")

# Engagement model (see module docstring). Written into _truth/world.json.
ENGAGEMENT = {
    "b_affinity": 1.2,
    "b_language": 1.8,
    "b_quality": 0.5,
    "noise_sd": 0.7,
    "bias": -1.2,
    "view_threshold": 0.15,
    "long_view_threshold": 0.7,
    # Calibrated on the "small" world: ~69% views, ~36% long views, ~5% favorites,
    # ~3% shares, ~2% boosts.
    "favorite_offset": 4.0,
    "boost_offset": 5.2,
    "share_offset": 4.6,
}


@dataclass(frozen=True)
class WorldCounts:
    users: int
    creators: int
    stories: int
    events: int
    days: int


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _sample_rows(rng: np.random.Generator, probs: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """One categorical draw per row of `probs[rows]` (rows index a [n, k] matrix)."""
    cumulative = np.cumsum(probs[rows], axis=1)
    u = rng.random(len(rows))[:, None] * cumulative[:, -1:]
    return np.minimum((cumulative < u).sum(axis=1), probs.shape[1] - 1)


def _zero_padded(prefix: str, n: int) -> pa.Array:
    width = len(str(max(n - 1, 0)))
    return pa.array(np.char.add(prefix, np.char.zfill(np.arange(n).astype(str), width)))


def _list_array(values: pa.Array, lengths: np.ndarray) -> pa.ListArray:
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), values)


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


def generate_world(cfg: WorldConfig, warehouse: Warehouse, *, progress: bool = True) -> dict[str, Any]:
    """Generates the world described by `cfg` into `warehouse`; returns its summary.

    Deterministic: the same `cfg` (seed included) writes the same tables.
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
    day_streams = streams[5:]

    n_topics = cfg.n_topics
    start = datetime(cfg.start_date.year, cfg.start_date.month, cfg.start_date.day, tzinfo=UTC)
    start_ts = int(start.timestamp())
    end_ts = start_ts + counts.days * SECONDS_PER_DAY
    lifetime_s = cfg.story_lifetime_days * SECONDS_PER_DAY

    # Topics: skewed popularity, hashtags, centroids in content space.
    topic_names = [
        TOPIC_WORDS[t % len(TOPIC_WORDS)] + ("" if t < len(TOPIC_WORDS) else str(t // len(TOPIC_WORDS)))
        for t in range(n_topics)
    ]
    topic_popularity = rng_topics.permutation(1.0 / np.arange(1, n_topics + 1) ** 0.7)
    topic_popularity /= topic_popularity.sum()
    centroids = rng_topics.normal(size=(n_topics, cfg.content_dim))
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)

    # Users.
    country_shares = np.array([share for _, _, share in COUNTRIES])
    country_shares /= country_shares.sum()
    primary_language = np.array([LANGUAGES.index(lang) for _, lang, _ in COUNTRIES])

    def place(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        country = rng.choice(len(COUNTRIES), size=n, p=country_shares)
        language = primary_language[country].copy()
        language[rng.random(n) < ENGLISH_SECOND_LANGUAGE] = LANGUAGES.index("en")
        return country, language

    user_country, user_language = place(rng_users, counts.users)
    user_interests = rng_users.dirichlet(3.0 * topic_popularity + 1e-3, size=counts.users)
    user_activity = rng_users.lognormal(0.0, 1.0, size=counts.users)
    user_age = rng_users.choice(len(AGE_BUCKETS), size=counts.users, p=AGE_SHARES)
    user_created = start_ts - rng_users.integers(SECONDS_PER_DAY, 3 * 365 * SECONDS_PER_DAY, size=counts.users)

    # Creators.
    creator_country, creator_language = place(rng_creators, counts.creators)
    creator_topics = rng_creators.dirichlet(1.5 * topic_popularity + 1e-3, size=counts.creators)
    followers = rng_creators.lognormal(6.0, 2.0, size=counts.creators).astype(np.int64)
    creator_reach = np.sqrt(followers + 10.0)
    productivity = rng_creators.permutation(1.0 / np.arange(1, counts.creators + 1))
    creator_created = start_ts - rng_creators.integers(
        30 * SECONDS_PER_DAY, 5 * 365 * SECONDS_PER_DAY, size=counts.creators
    )

    # Stories.
    n = counts.stories
    story_creator = rng_stories.choice(counts.creators, size=n, p=productivity / productivity.sum())
    story_topic = _sample_rows(rng_stories, creator_topics, story_creator)
    story_created = rng_stories.integers(int(start_ts - lifetime_s), end_ts, size=n)
    story_created = np.maximum(story_created, creator_created[story_creator])
    story_quality = rng_stories.normal(size=n)
    story_weight = np.exp(0.8 * story_quality) * creator_reach[story_creator] * (rng_stories.pareto(1.2, size=n) + 1.0)
    story_language = creator_language[story_creator]
    duration = np.clip(rng_stories.lognormal(np.log(20.0), 0.6, size=n), 3.0, 180.0).astype(np.float32)
    hashtags, hashtag_counts = _hashtags(rng_stories, story_topic, topic_names, cfg.hashtags_per_topic)
    descriptions = np.char.add(
        np.char.add(np.array(ADJECTIVES)[rng_stories.integers(len(ADJECTIVES), size=n)], " "),
        np.char.add(
            np.char.add(np.array(topic_names)[story_topic], " "),
            np.array(NOUNS)[rng_stories.integers(len(NOUNS), size=n)],
        ),
    )
    content = centroids[story_topic] + rng_stories.normal(
        scale=0.8 / np.sqrt(cfg.content_dim), size=(n, cfg.content_dim)
    )
    content = (content / np.linalg.norm(content, axis=1, keepdims=True)).astype(np.float32)

    user_ids = _zero_padded("u", counts.users)
    creator_ids = _zero_padded("c", counts.creators)
    story_ids = _zero_padded("s", n)
    country_codes = pa.array([c for c, _, _ in COUNTRIES])
    languages = pa.array(LANGUAGES)

    warehouse.clear()
    warehouse.write_table(
        "users",
        pa.table(
            {
                "user_id": user_ids,
                "country": country_codes.take(user_country),
                "language": languages.take(user_language),
                "age_bucket": pa.array(AGE_BUCKETS).take(user_age),
                "account_created_ts": pa.array(user_created, pa.int64()),
            }
        ),
    )
    warehouse.write_table(
        "creators",
        pa.table(
            {
                "creator_id": creator_ids,
                "country": country_codes.take(creator_country),
                "language": languages.take(creator_language),
                "created_ts": pa.array(creator_created, pa.int64()),
                "follower_count": pa.array(followers, pa.int64()),
            }
        ),
    )
    warehouse.write_table(
        "stories",
        pa.table(
            {
                "story_id": story_ids,
                "creator_id": creator_ids.take(story_creator),
                "created_ts": pa.array(story_created, pa.int64()),
                "country": country_codes.take(creator_country[story_creator]),
                "language": languages.take(story_language),
                "duration_s": pa.array(duration),
                "hashtags": _list_array(hashtags, hashtag_counts),
                "description": pa.array(descriptions),
                "content_embedding": _list_array(pa.array(content.ravel()), np.full(n, cfg.content_dim)),
            }
        ),
    )

    # Exposure groups: (language, topic) and (any language = -1, topic).
    groups: dict[Any, np.ndarray] = {}
    order = np.lexsort((story_topic, story_language))
    for (lang, topic), members in _split_by(order, story_language[order], story_topic[order]):
        groups[(int(lang), int(topic))] = members
    order = np.argsort(story_topic, kind="stable")
    for (topic,), members in _split_by(order, story_topic[order]):
        groups[(-1, int(topic))] = members
    groups["everything"] = np.arange(n)
    picker = _StoryPicker(story_created.astype(np.float64), story_weight, groups, lifetime_s)

    # Events, one UTC day at a time.
    day_weights = np.array(
        [(1 + 0.01 * d) * (1.15 if (start + timedelta(days=d)).weekday() >= 5 else 1.0) for d in range(counts.days)]
    )
    per_day = rng_days.multinomial(counts.events, day_weights / day_weights.sum())
    activity = user_activity / user_activity.sum()
    written = 0
    days = range(counts.days)
    for d in tqdm(days, desc="events by day", unit="day", disable=not progress):
        rng = np.random.default_rng(day_streams[d])
        m = int(per_day[d])
        user = rng.choice(counts.users, size=m, p=activity)
        ts = day_start_ts(cfg.start_date + timedelta(days=d)) + rng.integers(0, SECONDS_PER_DAY, size=m)
        ts.sort()
        topic = np.where(
            rng.random(m) < cfg.interest_exposure,
            _sample_rows(rng, user_interests, user),
            rng.choice(n_topics, size=m, p=topic_popularity),
        )
        language = np.where(rng.random(m) < cfg.local_exposure, user_language[user], -1)
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
            rng, user_interests, user_language, story_topic, story_language, story_quality, user, story
        )
        warehouse.write_events(
            pa.table(
                {
                    "user_id": user_ids.take(user),
                    "story_id": story_ids.take(story),
                    "ts": pa.array(ts, pa.int64()),
                    **{name: pa.array(values) for name, values in signals.items()},
                }
            )
        )
        written += len(user)

    warehouse.write_parquet(
        "_truth/users.parquet",
        pa.table(
            {
                "user_id": user_ids,
                "language": languages.take(user_language),
                "interests": _list_array(
                    pa.array(user_interests.astype(np.float32).ravel()), np.full(counts.users, n_topics)
                ),
            }
        ),
    )
    warehouse.write_parquet(
        "_truth/stories.parquet",
        pa.table(
            {
                "story_id": story_ids,
                "topic": pa.array(story_topic.astype(np.int32)),
                "language": languages.take(story_language),
                "quality": pa.array(story_quality.astype(np.float32)),
                "exposure_weight": pa.array(story_weight.astype(np.float32)),
            }
        ),
    )
    warehouse.write_json(
        "_truth/world.json",
        {
            "topics": topic_names,
            "topic_popularity": topic_popularity.round(6).tolist(),
            "engagement": ENGAGEMENT,
            "n_topics": n_topics,
        },
    )
    summary = {
        "source": "synthetic",
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "config": cfg.model_dump(mode="json"),
        "counts": {
            "users": counts.users,
            "creators": counts.creators,
            "stories": n,
            "events": written,
            "days": counts.days,
        },
        "seconds": round(time.perf_counter() - started, 2),
    }
    warehouse.write_json("_SOURCE.json", summary)
    return summary


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


def _hashtags(
    rng: np.random.Generator, topic: np.ndarray, topic_names: list[str], per_topic: int
) -> tuple[pa.Array, np.ndarray]:
    """1-3 distinct tags of the story's topic (Zipf within the topic), sometimes a generic
    tag and sometimes an off-topic one: signal with noise, as on a real platform."""
    n, n_topics = len(topic), len(topic_names)
    vocabulary = np.array(
        [name if j == 0 else f"{name}_{j}" for name in topic_names for j in range(per_topic)] + list(GENERIC_TAGS)
    )
    # Gumbel top-k: distinct tags drawn without replacement by Zipf weight.
    scores = -np.log(np.arange(1, per_topic + 1)) + rng.gumbel(size=(n, per_topic))
    ranked = np.argsort(-scores, axis=1)[:, :3]
    k = 1 + rng.binomial(2, 0.5, size=n)
    chosen = topic[:, None] * per_topic + ranked
    chosen = np.where(np.arange(3)[None, :] < k[:, None], chosen, -1)
    generic = np.where(rng.random(n) < 0.3, n_topics * per_topic + rng.integers(len(GENERIC_TAGS), size=n), -1)
    other_topic = (topic + rng.integers(1, n_topics, size=n)) % n_topics
    off_topic = np.where(rng.random(n) < 0.1, other_topic * per_topic, -1)
    table = np.column_stack([chosen, generic, off_topic])
    mask = table >= 0
    return pa.array(vocabulary[table[mask]]), mask.sum(axis=1)


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


def latent_score(user_interests, user_language, story_topic, story_language, story_quality, user, story) -> np.ndarray:
    """The noiseless engagement score z for (user, story) index pairs (the oracle)."""
    n_topics = user_interests.shape[1]
    affinity = user_interests[user, story_topic[story]] * n_topics
    same_language = user_language[user] == story_language[story]
    return (
        ENGAGEMENT["b_affinity"] * np.log(affinity + 0.05)
        + ENGAGEMENT["b_language"] * (same_language - 1.0)
        + ENGAGEMENT["b_quality"] * story_quality[story]
        + ENGAGEMENT["bias"]
    )


@dataclass(frozen=True)
class GroundTruth:
    """The oracle of a synthetic world, as written under `warehouse/_truth/`."""

    user_ids: np.ndarray
    user_language: np.ndarray
    user_interests: np.ndarray  # [n_users, n_topics]
    story_ids: np.ndarray
    story_topic: np.ndarray
    story_language: np.ndarray
    story_quality: np.ndarray

    @classmethod
    def load(cls, warehouse: Warehouse) -> GroundTruth:
        users = warehouse.read_parquet("_truth/users.parquet")
        stories = warehouse.read_parquet("_truth/stories.parquet")
        languages = {lang: i for i, lang in enumerate(LANGUAGES)}
        n_topics = warehouse.read_json("_truth/world.json")["n_topics"]
        return cls(
            user_ids=users["user_id"].to_numpy(zero_copy_only=False),
            user_language=np.array([languages[x] for x in users["language"].to_pylist()]),
            user_interests=np.asarray(users["interests"].combine_chunks().flatten(), dtype=np.float32).reshape(
                -1, n_topics
            ),
            story_ids=stories["story_id"].to_numpy(zero_copy_only=False),
            story_topic=stories["topic"].to_numpy(),
            story_language=np.array([languages[x] for x in stories["language"].to_pylist()]),
            story_quality=stories["quality"].to_numpy(),
        )

    def oracle_scores(self, user: np.ndarray, story: np.ndarray) -> np.ndarray:
        """Noiseless engagement scores for (user index, story index) pairs; higher is better."""
        return latent_score(
            self.user_interests,
            self.user_language,
            self.story_topic,
            self.story_language,
            self.story_quality,
            user,
            story,
        )
