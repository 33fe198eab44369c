"""Training examples, built batch by batch while the model trains (never all in memory).

`ExampleSource` turns example rows (events of `models.features.EventHistory`) into
batches of tower inputs, with their sampling correction and weights; `output_signature`
is the matching `tf.data` signature.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import tensorflow as tf

from config import FeatureConfig
from models.features import STORY_INPUTS, USER_INPUTS, EventHistory, story_features, user_features
from models.splits import Split


class ExampleSource:
    """Batches of training examples, features computed on the fly (see TrainConfig.example_features).

    With `corpus_negatives` N > 0 each batch also carries N stories drawn uniformly from the
    stories of `corpus` created before the batch's earliest example (mixed negative
    sampling, Yang et al. 2020; the keys are TwoTowerModel's): "corpus_story" (story-tower
    inputs, [N, ...]), "corpus_log_q" ([N], log of the uniform sampling probability) and
    "corpus_unigram_log_q" ([N], the stories' in-batch log q, as "log_q").

    With `time_block_rows` R > 0 (`train.time_block_batches` x the batch size) the rows, in
    time order, are cut into blocks of R consecutive examples, and every batch is drawn
    from one block (`batch_rows`). A batch's stories are then its rows' stories engaged at
    about the same time, each with its features as of about that time; from a permutation
    of the whole log, a story is an in-batch negative only as of a moment someone engaged
    it, maybe months away from the row, so its recent-activity features look the same
    whether it is in demand at the row's time or not, and the loss cannot teach them. The
    logQ correction then uses each story's share of its block's rows (the distribution
    that block's batches sample), not of the whole log.
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
        time_block_rows: int = 0,
        seed: int = 0,
    ):
        self.history = history
        self.rows = rows
        self.split = split
        self.timing = timing
        counts = np.bincount(history.story[rows], minlength=len(history.catalog.story_ids))
        self.log_q = np.log(np.maximum(counts, 1) / max(len(rows), 1)).astype(np.float32)
        self.blocks = time_blocks(rows, history.ts, time_block_rows) if time_block_rows else []
        self.block_log_q = (
            BlockFrequencies(history.story, len(history.catalog.story_ids), self.blocks) if self.blocks else None
        )
        # Each event's log q as a batch reads it: its story's share of its time block, or of
        # all training rows for an event in no block (or without blocks).
        self.row_log_q = self.log_q[history.story]
        if self.blocks:
            members = np.concatenate(self.blocks)
            self.row_log_q[members] = self.block_log_q.of_rows(members)
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
            "log_q": self.row_log_q[rows],
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
            batch["corpus_unigram_log_q"] = (
                self.block_log_q.of_stories(rows[0], sampled) if self.block_log_q else self.log_q[sampled]
            )
        return batch

    def batches(self, batch_size: int, seed: int) -> Iterator[dict[str, Any]]:
        for rows in self.batch_rows(batch_size, seed):
            yield self.batch(rows)

    def batches_per_epoch(self, batch_size: int) -> int:
        """How many batches `batch_rows` yields per epoch (full batches only)."""
        if not self.blocks:
            return len(self.rows) // batch_size
        return sum(len(block) // batch_size for block in self.blocks)

    def batch_rows(self, batch_size: int, seed: int) -> Iterator[np.ndarray]:
        """One epoch's batches as example rows, full batches only: a permutation by `seed`;
        with time blocks, each block's rows permuted and cut into batches, and all the
        blocks' batches in a random order (so the epoch does not run from old to new)."""
        rng = np.random.default_rng(seed)
        if not self.blocks:
            yield from _full_batches(rng.permutation(self.rows), batch_size)
            return
        batches = [batch for block in self.blocks for batch in _full_batches(rng.permutation(block), batch_size)]
        for i in rng.permutation(len(batches)):
            yield batches[i]


def _full_batches(order: np.ndarray, batch_size: int) -> list[np.ndarray]:
    return [order[start : start + batch_size] for start in range(0, len(order) - batch_size + 1, batch_size)]


def time_blocks(rows: np.ndarray, ts: np.ndarray, block_rows: int) -> list[np.ndarray]:
    """`rows` in time order, cut into blocks of `block_rows` consecutive examples; the last
    block takes the remainder (none is shorter than `block_rows` unless there is only one),
    so that blocks of whole batches leave out only what one permutation of all rows would."""
    ordered = rows[np.argsort(ts[rows], kind="stable")]
    starts = list(range(0, max(len(ordered) - block_rows, 0) + 1, block_rows))
    ends = starts[1:] + [len(ordered)]
    return [ordered[a:b] for a, b in zip(starts, ends, strict=True)]


class BlockFrequencies:
    """log q of a story within a time block: its share of the block's rows (at least one)."""

    def __init__(self, story: np.ndarray, n_stories: int, blocks: list[np.ndarray]):
        """story: [events] each event's story row; blocks: disjoint arrays of event rows."""
        self.n_stories = n_stories
        self.block_of = np.full(len(story), -1, dtype=np.int64)
        for b, rows in enumerate(blocks):
            self.block_of[rows] = b
        self.sizes = np.array([len(rows) for rows in blocks], dtype=np.float64)
        member = np.concatenate(blocks)
        keys = self.block_of[member] * self.n_stories + story[member]
        self.keys, counts = np.unique(keys, return_counts=True)
        self.counts = counts.astype(np.float64)
        self.story = story

    def of_rows(self, rows: np.ndarray) -> np.ndarray:
        """log q of each row's story in the row's block (rows of the blocks only)."""
        return self._log_q(self.block_of[rows], self.story[rows])

    def of_stories(self, row: int, stories: np.ndarray) -> np.ndarray:
        """log q of `stories` in the block of training row `row` (a batch's rows share one)."""
        return self._log_q(np.full(len(stories), self.block_of[row]), stories)

    def _log_q(self, blocks: np.ndarray, stories: np.ndarray) -> np.ndarray:
        keys = blocks * self.n_stories + stories
        at = np.minimum(np.searchsorted(self.keys, keys), len(self.keys) - 1)
        counts = np.where(self.keys[at] == keys, self.counts[at], 1.0)
        return np.log(counts / self.sizes[blocks]).astype(np.float32)


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


def output_signature(sample: dict[str, Any]):
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
