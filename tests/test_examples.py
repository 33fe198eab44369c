"""Training batches (models.examples.ExampleSource): which rows a batch holds, its logQ."""

import numpy as np
import pytest

from models.examples import ExampleSource, time_blocks
from models.features import EventHistory
from models.splits import Split
from tests.test_features import CFG, DAY, T0, _catalog, _events

STORIES = ("s1", "s2", "s3", "s4")


def _history(n: int = 40) -> EventHistory:
    """n events a day apart, alice and bob in turn; s1 is watched every day in the first
    half, s4 every day in the second, s2 and s3 share the other days."""
    rows = []
    for i in range(n):
        if i % 2 == 0:
            story = "s1" if i < n // 2 else "s4"
        else:
            story = "s2" if i % 4 == 1 else "s3"
        rows.append(("alice" if i % 2 else "bob", story, T0 + i * DAY, True))
    return EventHistory.from_events(_events(rows), _catalog(), CFG)


def _source(history, rows, **kwargs) -> ExampleSource:
    split = Split(train_parts=lambda: [], test=None, as_of=int(history.ts.max()) + 1, kind="time")
    return ExampleSource(history, rows, CFG, split, **kwargs)


def test_time_blocks_cut_rows_in_time_order_and_the_last_takes_the_remainder():
    ts = np.array([5, 1, 4, 2, 3, 9, 7, 8, 6, 0])
    rows = np.arange(10)
    assert [ts[b].tolist() for b in time_blocks(rows, ts, 4)] == [[0, 1, 2, 3], [4, 5, 6, 7, 8, 9]]
    assert [ts[b].tolist() for b in time_blocks(rows, ts, 5)] == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]
    assert [len(b) for b in time_blocks(rows, ts, 20)] == [10]  # fewer rows than one block


def test_every_batch_comes_from_one_time_block_and_an_epoch_has_every_full_batch():
    history = _history(40)
    rows = np.arange(36)  # the last 4 events are held out
    source = _source(history, rows, time_block_rows=8)
    blocks = [set(b.tolist()) for b in source.blocks]
    assert [len(b) for b in blocks] == [8, 8, 8, 12]
    epochs = [list(source.batch_rows(4, seed)) for seed in (1, 2)]
    for batches in epochs:
        assert len(batches) == 36 // 4 and all(len(b) == 4 for b in batches)
        assert all(any(set(b.tolist()) <= block for block in blocks) for b in batches)
        # The blocks' batches are interleaved, not run from the oldest block to the newest.
        assert [min(b) for b in batches] != sorted(min(b) for b in batches)
    assert [b.tolist() for b in epochs[0]] != [b.tolist() for b in epochs[1]]
    # Without blocks: one permutation of all rows, as before.
    plain = list(_source(history, rows).batch_rows(4, 1))
    np.testing.assert_array_equal(np.concatenate(plain), np.random.default_rng(1).permutation(rows))


def test_the_logq_of_a_time_blocked_batch_is_each_storys_share_of_its_block():
    history = _history(40)
    rows = np.arange(36)
    source = _source(history, rows, time_block_rows=8)
    story = np.asarray(STORIES)[history.story]
    for batch_rows in source.batch_rows(4, 3):
        block = next(b for b in source.blocks if set(batch_rows.tolist()) <= set(b.tolist()))
        expected = [np.log(np.sum(story[block] == story[r]) / len(block)) for r in batch_rows]
        np.testing.assert_allclose(source.batch(batch_rows)["log_q"], expected, rtol=1e-6)
    # The first block (days 0-7) is half s1, the last (days 24-35) half s4: the same story's
    # q follows its time, where the whole log's share would not.
    first, last = source.blocks[0], source.blocks[-1]
    s1_first = int(first[story[first] == "s1"][0])
    s4_last = int(last[story[last] == "s4"][0])
    assert source.batch(np.array([s1_first]))["log_q"][0] == pytest.approx(np.log(0.5))
    assert source.batch(np.array([s4_last]))["log_q"][0] == pytest.approx(np.log(0.5))
    assert source.block_log_q.of_stories(s1_first, np.array([3]))[0] == pytest.approx(np.log(1 / 8))  # s4: none
    # A row in no block (held out of training) keeps the whole log's share.
    held_out = np.array([38])
    global_q = np.log(np.sum(story[rows] == story[38]) / len(rows))
    assert source.batch(held_out)["log_q"][0] == pytest.approx(global_q)
