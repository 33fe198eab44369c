"""Tower features, computed "as of" a timestamp: one definition for training and inference.

Training examples (each positive event, as of its own timestamp) and the Beam inference
jobs (every user or story, as of the snapshot time) call the same two functions,
`user_features` and `story_features`, over an `EventHistory`. No feature may see an
event at or after its as-of time: every window is [as_of - w, as_of), and the history
sequences stop strictly before as_of.

User tower inputs (only the user's own data: the privacy rule of the seed):

    user_id, country, language, age_bucket       string [Q]
    user_stats                                   float32 [Q, len(user_stat_names)]
    history_story_ids, history_creator_ids       string [Q, history_length] ("" = padding)
    history_hashtags                             string [Q, hashtag_history_stories * story_hashtags]

Story tower inputs:

    story_id, creator_id, country, language      string [Q]
    hashtags                                     string [Q, story_hashtags]
    content_embedding                            float32 [Q, content_dim]
    story_stats                                  float32 [Q, len(story_stat_names)]

Implementation: events are sorted by (entity, ts) under a composite int64 key
`entity << 33 | ts`, with prefix sums of each signal, so a window count for any
(entity, as_of) query is two binary searches and a subtraction, vectorised over queries.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from config import FeatureConfig

# The tower inputs, in signature order (what user_features / story_features return).
USER_INPUTS = (
    "user_id",
    "country",
    "language",
    "age_bucket",
    "user_stats",
    "history_story_ids",
    "history_creator_ids",
    "history_hashtags",
)
STORY_INPUTS = ("story_id", "creator_id", "country", "language", "hashtags", "content_embedding", "story_stats")

_TS_BITS = 33  # timestamps up to 2**33 s (year 2242); entities up to 2**30
SECONDS_PER_DAY = 86_400.0
PAD = ""


def _strings(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    return np.asarray(column.to_numpy(zero_copy_only=False), dtype=object)


def _padded_lists(column: pa.ChunkedArray | pa.Array, width: int) -> np.ndarray:
    """A list<string> column as a [rows, width] object matrix, truncated or "" padded."""
    lists = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    lengths = pc.fill_null(pc.list_value_length(lists), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    values = np.asarray(pc.list_flatten(lists).to_numpy(zero_copy_only=False), dtype=object)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    out = np.full((len(lists), width), PAD, dtype=object)
    for k in range(width):  # one vectorised step per slot, not one per row
        rows = np.flatnonzero(lengths > k)
        out[rows, k] = values[starts[rows] + k]
    return out


def index_in(values: pa.ChunkedArray | pa.Array, keys: np.ndarray | pa.Array, what: str) -> np.ndarray:
    """Row of each value in `keys` (a hash join in Arrow); KeyError naming a missing one."""
    keys = keys if isinstance(keys, pa.Array) else pa.array(keys, type=pa.string())
    found = pc.index_in(values, value_set=keys)
    if found.null_count:
        missing = values.filter(pc.is_null(found))[0].as_py()
        raise KeyError(f"{what} id {missing!r} is in the events but not in the {what} table")
    return found.to_numpy(zero_copy_only=False).astype(np.int64)


def positive_scores(events: pa.Table, cfg: FeatureConfig) -> np.ndarray:
    """sum(weight * signal) per event: the combined engagement label."""
    score = np.zeros(len(events), dtype=np.float32)
    for signal, weight in cfg.label_weights.items():
        if signal not in events.column_names:
            raise KeyError(f"label signal {signal!r} is not an events column; set features.label_weights")
        score += weight * events[signal].to_numpy(zero_copy_only=False).astype(np.float32)
    return score


class _EventIndex:
    """Events of one entity kind sorted by (entity, ts), with prefix sums for windows."""

    def __init__(self, entity: np.ndarray, ts: np.ndarray, columns: dict[str, np.ndarray]):
        order = np.lexsort((ts, entity))
        self.entity = entity[order]
        self.ts = ts[order]
        self.keys = (self.entity.astype(np.int64) << _TS_BITS) | self.ts.astype(np.int64)
        self.order = order
        self.prefix = {
            name: np.concatenate([[0.0], np.cumsum(values[order], dtype=np.float64)])
            for name, values in columns.items()
        }

    def position(self, entity: np.ndarray, ts: np.ndarray) -> np.ndarray:
        """Index of the first event of `entity` at or after `ts` (so: events before ts end here)."""
        ts = np.clip(ts, 0, (1 << _TS_BITS) - 1).astype(np.int64)
        return np.searchsorted(self.keys, (entity.astype(np.int64) << _TS_BITS) | ts, side="left")

    def window_sum(self, name: str, entity: np.ndarray, as_of: np.ndarray, window_s: float | None) -> np.ndarray:
        """Sum of column `name` over the entity's events with as_of - window <= ts < as_of."""
        end = self.position(entity, as_of)
        start = self.position(entity, as_of - window_s if window_s is not None else np.zeros_like(as_of))
        return self.prefix[name][end] - self.prefix[name][start]


@dataclass(frozen=True)
class Catalog:
    """Users, stories and creators as arrays, with id -> row lookups."""

    user_ids: np.ndarray
    user_country: np.ndarray
    user_language: np.ndarray
    user_age_bucket: np.ndarray
    user_created_ts: np.ndarray
    story_ids: np.ndarray
    story_creator: np.ndarray  # creator id strings
    story_country: np.ndarray
    story_language: np.ndarray
    story_created_ts: np.ndarray
    story_duration: np.ndarray  # NaN where unknown
    story_hashtags: np.ndarray  # [n_stories, story_hashtags] strings, "" padded
    story_content: np.ndarray  # [n_stories, content_dim] float32
    story_creator_followers: np.ndarray

    @classmethod
    def from_tables(cls, users: pa.Table | None, stories: pa.Table, creators: pa.Table, cfg: FeatureConfig) -> Catalog:
        """Arrays of the three tables.

        Two partial catalogs serve the inference jobs, which hold one key bucket at a
        time: `users=None` gives a catalog without user rows (story features only; build
        its history with `EventHistory.from_tables(..., users_known=False)`), and a
        stories table without `content_embedding` gives one for user features only
        (they read the ids, creators and hashtags of stories, never their content).
        """
        users = users if users is not None else _NO_USERS
        followers = dict(zip(creators["creator_id"].to_pylist(), creators["follower_count"].to_pylist(), strict=True))
        creator = _strings(stories["creator_id"])
        hashtags = _padded_lists(stories["hashtags"], cfg.story_hashtags)
        if "content_embedding" in stories.column_names:
            content = stories["content_embedding"].combine_chunks()
        else:
            content = pa.array([[]] * len(stories), type=pa.list_(pa.float32()))
        dim = (len(content.flatten()) // len(stories)) if len(stories) else 0
        duration = stories["duration_s"].to_numpy(zero_copy_only=False).astype(np.float32)
        return cls(
            user_ids=_strings(users["user_id"]),
            user_country=_strings(users["country"]),
            user_language=_strings(users["language"]),
            user_age_bucket=_strings(users["age_bucket"]),
            user_created_ts=users["account_created_ts"].to_numpy(),
            story_ids=_strings(stories["story_id"]),
            story_creator=creator,
            story_country=_strings(stories["country"]),
            story_language=_strings(stories["language"]),
            story_created_ts=stories["created_ts"].to_numpy(),
            story_duration=np.where(np.isnan(duration), np.nan, duration),
            story_hashtags=hashtags,
            story_content=np.asarray(content.flatten(), dtype=np.float32).reshape(len(stories), dim),
            story_creator_followers=np.array([followers.get(c, 0) for c in creator], dtype=np.float64),
        )

    def user_index(self, ids) -> np.ndarray:
        return index_in(pa.array(list(ids), type=pa.string()), self.user_ids, "user")

    def story_index(self, ids) -> np.ndarray:
        return index_in(pa.array(list(ids), type=pa.string()), self.story_ids, "story")


_NO_USERS = pa.table(
    {
        "user_id": pa.array([], pa.string()),
        "country": pa.array([], pa.string()),
        "language": pa.array([], pa.string()),
        "age_bucket": pa.array([], pa.string()),
        "account_created_ts": pa.array([], pa.int64()),
    }
)


class EventHistory:
    """The event log, indexed per user and per story, for as-of feature queries.

    Holds compact arrays only (row indices, timestamps, label scores, watch ratios):
    about 40 bytes per event. Build it with `from_events` (one table) or `from_tables`
    (an iterable of tables, e.g. one per day partition, so the string ids of the whole
    log are never in memory at once).
    """

    def __init__(
        self,
        user: np.ndarray,
        story: np.ndarray,
        ts: np.ndarray,
        score: np.ndarray,
        watch_ratio: np.ndarray,
        catalog: Catalog,
        cfg: FeatureConfig,
    ):
        self.catalog = catalog
        self.cfg = cfg
        self.user, self.story, self.ts, self.score = user, story, ts.astype(np.int64), score
        self.watch_ratio = watch_ratio
        self.positive = self.score >= cfg.label_threshold

    # The indexes are built on first use: story features never need the per-user ones
    # (a sort of the whole log each), user features never the per-story one.

    def _columns(self) -> dict[str, np.ndarray]:
        return {
            "impressions": np.ones(len(self.ts)),
            "positives": self.positive.astype(np.float64),
            "watch_ratio": self.watch_ratio.astype(np.float64),
        }

    @cached_property
    def by_user(self) -> _EventIndex:
        return _EventIndex(self.user, self.ts, self._columns())

    @cached_property
    def by_story(self) -> _EventIndex:
        return _EventIndex(self.story, self.ts, self._columns())

    @cached_property
    def positives_by_user(self) -> _EventIndex:
        positive = np.flatnonzero(self.positive)
        return _EventIndex(self.user[positive], self.ts[positive], {})

    @cached_property
    def positive_story(self) -> np.ndarray:
        """Story rows of the positive events, in `positives_by_user` order."""
        return self.story[np.flatnonzero(self.positive)][self.positives_by_user.order]

    @classmethod
    def from_events(cls, events: pa.Table, catalog: Catalog, cfg: FeatureConfig) -> EventHistory:
        return cls.from_tables([events], catalog, cfg)

    @classmethod
    def from_tables(cls, tables, catalog: Catalog, cfg: FeatureConfig, *, users_known: bool = True) -> EventHistory:
        """`users_known=False`: the catalog has no user rows (see `Catalog.from_tables`);
        events are indexed by their own user ids, which only story features may use."""
        users, stories, ts, scores, watch = [], [], [], [], []
        user_keys = pa.array(catalog.user_ids, type=pa.string())
        story_keys = pa.array(catalog.story_ids, type=pa.string())
        unknown_users = []
        for events in tables:
            if users_known:
                users.append(index_in(events["user_id"], user_keys, "user"))
            else:
                unknown_users.append(events["user_id"])
            stories.append(index_in(events["story_id"], story_keys, "story"))
            ts.append(events["ts"].to_numpy())
            scores.append(positive_scores(events, cfg))
            watch.append(events["watch_ratio"].to_numpy().astype(np.float32))
        if not users_known and unknown_users:  # number them; only their identity matters
            encoded = pc.dictionary_encode(
                pa.chunked_array([c for column in unknown_users for c in column.chunks], pa.string()).combine_chunks()
            )
            users = [encoded.indices.to_numpy(zero_copy_only=False)]
        join = lambda parts, dtype: np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype)  # noqa: E731
        return cls(
            join(users, np.int64),
            join(stories, np.int64),
            join(ts, np.int64),
            join(scores, np.float32),
            join(watch, np.float32),
            catalog,
            cfg,
        )


def user_stat_names(cfg: FeatureConfig) -> list[str]:
    names = ["log_account_age_days"]
    for w in cfg.windows_days:
        names += [f"log_impressions_{w:g}d", f"log_positives_{w:g}d", f"positive_rate_{w:g}d", f"watch_ratio_{w:g}d"]
    return names + ["log_impressions_all", "log_positives_all"]


def story_stat_names(cfg: FeatureConfig) -> list[str]:
    names = ["log_age_hours", "log_duration_s", "duration_missing", "log_creator_followers"]
    for w in cfg.windows_days:
        names += [f"log_impressions_{w:g}d", f"log_positives_{w:g}d", f"positive_rate_{w:g}d"]
    return names + ["log_impressions_all", "log_positives_all", "positive_rate_all"]


def user_features(history: EventHistory, user: np.ndarray, as_of: np.ndarray) -> dict[str, np.ndarray]:
    """User-tower inputs for user rows `user` as of `as_of` (both [Q])."""
    cat, cfg, idx = history.catalog, history.cfg, history.by_user
    as_of = np.asarray(as_of, dtype=np.int64)
    stats = [np.log1p(np.maximum(as_of - cat.user_created_ts[user], 0) / SECONDS_PER_DAY)]
    for w in cfg.windows_days:
        window = w * SECONDS_PER_DAY
        n = idx.window_sum("impressions", user, as_of, window)
        p = idx.window_sum("positives", user, as_of, window)
        watch = idx.window_sum("watch_ratio", user, as_of, window)
        stats += [np.log1p(n), np.log1p(p), _ratio(p, n), _ratio(watch, n)]
    stats += [
        np.log1p(idx.window_sum("impressions", user, as_of, None)),
        np.log1p(idx.window_sum("positives", user, as_of, None)),
    ]

    # Most recent positives strictly before as_of, newest first.
    pos = history.positives_by_user
    end = pos.position(user, as_of)
    start = pos.position(user, np.zeros_like(as_of))
    n_hist = cfg.history_length
    slots = end[:, None] - 1 - np.arange(n_hist)[None, :]
    valid = slots >= start[:, None]
    if len(history.positive_story):
        story = np.where(valid, history.positive_story[np.clip(slots, 0, len(history.positive_story) - 1)], -1)
    else:  # nobody has engaged yet
        story = np.full(slots.shape, -1, dtype=np.int64)
    history_story_ids = _take_or_pad(cat.story_ids, story)
    history_creator_ids = _take_or_pad(cat.story_creator, story)
    recent = story[:, : cfg.hashtag_history_stories]
    tags = np.where(recent[:, :, None] >= 0, cat.story_hashtags[np.maximum(recent, 0)], PAD)
    return {
        "user_id": cat.user_ids[user],
        "country": cat.user_country[user],
        "language": cat.user_language[user],
        "age_bucket": cat.user_age_bucket[user],
        "user_stats": np.stack(stats, axis=1).astype(np.float32),
        "history_story_ids": history_story_ids,
        "history_creator_ids": history_creator_ids,
        "history_hashtags": tags.reshape(len(user), -1),
    }


def story_features(history: EventHistory, story: np.ndarray, as_of: np.ndarray) -> dict[str, np.ndarray]:
    """Story-tower inputs for story rows `story` as of `as_of` (both [Q])."""
    cat, cfg, idx = history.catalog, history.cfg, history.by_story
    as_of = np.asarray(as_of, dtype=np.int64)
    duration = cat.story_duration[story]
    missing = np.isnan(duration)
    stats = [
        np.log1p(np.maximum(as_of - cat.story_created_ts[story], 0) / 3600.0),
        np.log1p(np.where(missing, 0.0, duration)),
        missing.astype(np.float64),
        np.log1p(cat.story_creator_followers[story]),
    ]
    for w in list(cfg.windows_days) + [None]:
        window = w * SECONDS_PER_DAY if w is not None else None
        n = idx.window_sum("impressions", story, as_of, window)
        p = idx.window_sum("positives", story, as_of, window)
        stats += [np.log1p(n), np.log1p(p), _ratio(p, n)]
    return {
        "story_id": cat.story_ids[story],
        "creator_id": cat.story_creator[story],
        "country": cat.story_country[story],
        "language": cat.story_language[story],
        "hashtags": cat.story_hashtags[story],
        "content_embedding": cat.story_content[story],
        "story_stats": np.stack(stats, axis=1).astype(np.float32),
    }


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return np.divide(num, den, out=np.zeros_like(num, dtype=np.float64), where=den > 0)


def _take_or_pad(values: np.ndarray, index: np.ndarray) -> np.ndarray:
    return np.where(index >= 0, values[np.maximum(index, 0)], PAD)
