"""The synthetic world's population: who and what exists before the first event.

Vocabularies (countries and languages, topics, tags, description words), then topics,
users, creators and stories drawn from their own random streams (`warehouse.synthetic`
spawns them and simulates the events; `warehouse.ground_truth` holds the engagement model
and its oracle). See `warehouse.synthetic` for what each entity carries.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa

from config import WorldConfig
from warehouse.tables import SECONDS_PER_DAY

# (country, primary language, share of users)
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


@dataclass(frozen=True)
class WorldCounts:
    users: int
    creators: int
    stories: int
    events: int
    days: int


def sample_rows(rng: np.random.Generator, probs: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """One categorical draw per row of `probs[rows]` (rows index a [n, k] matrix)."""
    cumulative = np.cumsum(probs[rows], axis=1)
    u = rng.random(len(rows))[:, None] * cumulative[:, -1:]
    return np.minimum((cumulative < u).sum(axis=1), probs.shape[1] - 1)


def zero_padded(prefix: str, n: int) -> pa.Array:
    width = len(str(max(n - 1, 0)))
    return pa.array(np.char.add(prefix, np.char.zfill(np.arange(n).astype(str), width)))


@dataclass(frozen=True)
class Clock:
    start: datetime
    start_ts: int
    end_ts: int
    lifetime_s: float  # how long a story is shown after it is posted

    @classmethod
    def of(cls, cfg: WorldConfig, days: int) -> Clock:
        start = datetime(cfg.start_date.year, cfg.start_date.month, cfg.start_date.day, tzinfo=UTC)
        start_ts = int(start.timestamp())
        return cls(start, start_ts, start_ts + days * SECONDS_PER_DAY, cfg.story_lifetime_days * SECONDS_PER_DAY)


@dataclass(frozen=True)
class Topics:
    """Skewed popularity, hashtags (by name), centroids in content space."""

    names: list[str]
    popularity: np.ndarray  # [n_topics], sums to 1
    centroids: np.ndarray  # [n_topics, content_dim], unit rows

    @classmethod
    def draw(cls, rng: np.random.Generator, n_topics: int, content_dim: int) -> Topics:
        names = [
            TOPIC_WORDS[t % len(TOPIC_WORDS)] + ("" if t < len(TOPIC_WORDS) else str(t // len(TOPIC_WORDS)))
            for t in range(n_topics)
        ]
        popularity = rng.permutation(1.0 / np.arange(1, n_topics + 1) ** 0.7)
        popularity /= popularity.sum()
        centroids = rng.normal(size=(n_topics, content_dim))
        centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
        return cls(names, popularity, centroids)


def place(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(country, language) indices of n people: by country share, some with English instead."""
    country_shares = np.array([share for _, _, share in COUNTRIES])
    country_shares /= country_shares.sum()
    primary_language = np.array([LANGUAGES.index(lang) for _, lang, _ in COUNTRIES])
    country = rng.choice(len(COUNTRIES), size=n, p=country_shares)
    language = primary_language[country].copy()
    language[rng.random(n) < ENGLISH_SECOND_LANGUAGE] = LANGUAGES.index("en")
    return country, language


@dataclass(frozen=True)
class Users:
    country: np.ndarray
    language: np.ndarray
    interests: np.ndarray  # [n_users, n_topics], Dirichlet rows
    activity: np.ndarray  # log-normal: how many of the events are theirs
    age: np.ndarray
    created: np.ndarray

    @classmethod
    def draw(cls, rng: np.random.Generator, n: int, topics: Topics, clock: Clock) -> Users:
        country, language = place(rng, n)
        interests = rng.dirichlet(3.0 * topics.popularity + 1e-3, size=n)
        activity = rng.lognormal(0.0, 1.0, size=n)
        age = rng.choice(len(AGE_BUCKETS), size=n, p=AGE_SHARES)
        created = clock.start_ts - rng.integers(SECONDS_PER_DAY, 3 * 365 * SECONDS_PER_DAY, size=n)
        return cls(country, language, interests, activity, age, created)


@dataclass(frozen=True)
class Creators:
    country: np.ndarray
    language: np.ndarray
    topics: np.ndarray  # [n_creators, n_topics], focused Dirichlet rows
    followers: np.ndarray
    reach: np.ndarray
    productivity: np.ndarray  # Zipf: a few creators post most stories
    created: np.ndarray

    @classmethod
    def draw(cls, rng: np.random.Generator, n: int, topics: Topics, clock: Clock) -> Creators:
        country, language = place(rng, n)
        creator_topics = rng.dirichlet(1.5 * topics.popularity + 1e-3, size=n)
        followers = rng.lognormal(6.0, 2.0, size=n).astype(np.int64)
        productivity = rng.permutation(1.0 / np.arange(1, n + 1))
        created = clock.start_ts - rng.integers(30 * SECONDS_PER_DAY, 5 * 365 * SECONDS_PER_DAY, size=n)
        return cls(country, language, creator_topics, followers, np.sqrt(followers + 10.0), productivity, created)


@dataclass(frozen=True)
class Stories:
    creator: np.ndarray
    topic: np.ndarray
    created: np.ndarray
    quality: np.ndarray  # latent
    weight: np.ndarray  # exposure: quality x creator reach x Pareto noise
    language: np.ndarray
    duration: np.ndarray
    hashtags: pa.Array  # flat, `hashtag_counts` per story
    hashtag_counts: np.ndarray
    descriptions: np.ndarray
    content: np.ndarray  # [n_stories, content_dim], unit rows near the topic's centroid

    @classmethod
    def draw(
        cls, rng: np.random.Generator, n: int, cfg: WorldConfig, topics: Topics, creators: Creators, clock: Clock
    ) -> Stories:
        creator = rng.choice(len(creators.created), size=n, p=creators.productivity / creators.productivity.sum())
        topic = sample_rows(rng, creators.topics, creator)
        created = rng.integers(int(clock.start_ts - clock.lifetime_s), clock.end_ts, size=n)
        created = np.maximum(created, creators.created[creator])
        quality = rng.normal(size=n)
        weight = np.exp(0.8 * quality) * creators.reach[creator] * (rng.pareto(1.2, size=n) + 1.0)
        duration = np.clip(rng.lognormal(np.log(20.0), 0.6, size=n), 3.0, 180.0).astype(np.float32)
        hashtags, hashtag_counts = _hashtags(rng, topic, topics.names, cfg.hashtags_per_topic)
        descriptions = np.char.add(
            np.char.add(np.array(ADJECTIVES)[rng.integers(len(ADJECTIVES), size=n)], " "),
            np.char.add(
                np.char.add(np.array(topics.names)[topic], " "),
                np.array(NOUNS)[rng.integers(len(NOUNS), size=n)],
            ),
        )
        content = topics.centroids[topic] + rng.normal(scale=0.8 / np.sqrt(cfg.content_dim), size=(n, cfg.content_dim))
        content = (content / np.linalg.norm(content, axis=1, keepdims=True)).astype(np.float32)
        return cls(
            creator,
            topic,
            created,
            quality,
            weight,
            creators.language[creator],
            duration,
            hashtags,
            hashtag_counts,
            descriptions,
            content,
        )


@dataclass(frozen=True)
class Ids:
    """The tables' id and code columns, as Arrow arrays to `take` rows from."""

    users: pa.Array
    creators: pa.Array
    stories: pa.Array
    countries: pa.Array
    languages: pa.Array

    @classmethod
    def of(cls, counts: WorldCounts) -> Ids:
        return cls(
            zero_padded("u", counts.users),
            zero_padded("c", counts.creators),
            zero_padded("s", counts.stories),
            pa.array([c for c, _, _ in COUNTRIES]),
            pa.array(LANGUAGES),
        )


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
