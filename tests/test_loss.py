"""The in-batch losses on a batch small enough to work out by hand."""

import math

import numpy as np
import pytest

from models.loss import in_batch_loss, mixed_log_q, pointwise_loss

# Two users, two stories, unit vectors: logits = q @ c.T / temperature = [[1, 0], [0, 1]].
Q = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
C = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
IDS = np.array(["a", "b"])


def loss(**kwargs):
    defaults = dict(temperature=1.0, loss="softmax")
    return float(in_batch_loss(Q, C, kwargs.pop("ids", IDS), **{**defaults, **kwargs}))


def test_softmax_on_the_hand_worked_batch():
    # Each row: -log(e^1 / (e^1 + e^0)) = log(1 + e^-1) = 0.313262.
    assert loss() == pytest.approx(math.log(1 + math.exp(-1)), abs=1e-6)


def test_temperature_divides_the_logits():
    # Logits [2, 0]: log(1 + e^-2) = 0.126928.
    assert loss(temperature=0.5) == pytest.approx(math.log(1 + math.exp(-2)), abs=1e-6)


def test_sigmoid_sums_binary_cross_entropy_over_a_rows_pairs():
    # Row 0: positive pair, logit 1 -> log(1 + e^-1); negative pair, logit 0 -> log 2.
    # Summed over the row: 1.006409; row 1 is the same, so that is the mean over rows too.
    expected = math.log(1 + math.exp(-1)) + math.log(2)
    assert loss(loss="sigmoid") == pytest.approx(expected, abs=1e-6)
    # A bias b shifts every logit: positive log(1 + e^-(1+b)), negative log(1 + e^(0+b)).
    b = -1.0
    expected = math.log(1 + math.exp(-(1 + b))) + math.log(1 + math.exp(b))
    assert loss(loss="sigmoid", sigmoid_bias=b) == pytest.approx(expected, abs=1e-6)


def test_accidental_hits_are_not_negatives():
    # Both rows' positive is story "a": the off-diagonal "a" is no negative, so each row
    # only has its positive: softmax loss 0, sigmoid loss log(1 + e^-1).
    same = np.array(["a", "a"])
    assert loss(ids=same) == pytest.approx(0.0, abs=1e-6)
    assert loss(ids=same, loss="sigmoid") == pytest.approx(math.log(1 + math.exp(-1)), abs=1e-6)


def test_logq_correction_subtracts_log_sampling_probability():
    # log q = [ln 0.5, ln 0.25]: row 0 logits [1 + ln 2, ln 4], row 1 [ln 2, 1 + ln 4].
    row0 = -(1 + math.log(2)) + math.log(math.exp(1 + math.log(2)) + math.exp(math.log(4)))
    row1 = -(1 + math.log(4)) + math.log(math.exp(math.log(2)) + math.exp(1 + math.log(4)))
    got = loss(candidate_log_q=np.log(np.array([0.5, 0.25], np.float32)))
    assert got == pytest.approx((row0 + row1) / 2, abs=1e-6)  # 0.360146


def test_logq_strength_scales_the_correction_and_zero_turns_it_off():
    log_q = np.log(np.array([0.5, 0.25], np.float32))
    assert loss(candidate_log_q=log_q, logq_strength=0.0) == pytest.approx(loss(), abs=1e-7)
    # Strength 0.5 subtracts 0.5 * log q: the same as the full correction with q ** 0.5.
    half = loss(candidate_log_q=log_q, logq_strength=0.5)
    assert half == pytest.approx(loss(candidate_log_q=0.5 * log_q), abs=1e-6)
    assert loss() < half < loss(candidate_log_q=log_q)  # 0.313262 < . < 0.360146


def test_sample_weights_weight_the_rows():
    # Scaling user 1's vector by 2 gives row 1 logits [0, 2]: its loss is log(1 + e^-2),
    # row 0 keeps log(1 + e^-1). Weights [3, 1] give (3 * row0 + row1) / 4.
    q = np.array([[1.0, 0.0], [0.0, 2.0]], np.float32)
    row0, row1 = math.log(1 + math.exp(-1)), math.log(1 + math.exp(-2))
    weights = np.array([3.0, 1.0], np.float32)
    got = float(in_batch_loss(q, C, IDS, temperature=1.0, loss="softmax", sample_weight=weights))
    assert got == pytest.approx((3 * row0 + row1) / 4, abs=1e-6)
    unweighted = float(in_batch_loss(q, C, IDS, temperature=1.0, loss="softmax"))
    assert unweighted == pytest.approx((row0 + row1) / 2, abs=1e-6)


# Mixed negatives: one corpus sample, story "a" (user 0's positive) at [0.6, 0.8]. Its
# logits are [0.6, 0.8]: in row 0 it is an accidental hit (masked), in row 1 a negative.
CORPUS = np.array([[0.6, 0.8]], np.float32)
CORPUS_IDS = np.array(["a"])


def mixed(**kwargs):
    return loss(extra_candidate_embeddings=CORPUS, extra_candidate_ids=CORPUS_IDS, **kwargs)


def test_mixed_negatives_softmax_on_the_hand_worked_batch():
    # Row 0: logits [1, 0, masked] -> log(1 + e^-1) = 0.313262.
    # Row 1: logits [0, 1, 0.8] -> -1 + log(e^0 + e^1 + e^0.8) = log(1 + e^-1 + e^-0.2) = 0.782349.
    row0, row1 = math.log(1 + math.exp(-1)), math.log(1 + math.exp(-1) + math.exp(-0.2))
    assert mixed() == pytest.approx((row0 + row1) / 2, abs=1e-6)  # 0.547807


def test_mixed_negatives_sigmoid_on_the_hand_worked_batch():
    # Each row: positive (logit 1) log(1 + e^-1) and the in-batch negative (logit 0) log 2;
    # row 1 also has the corpus negative (logit 0.8): log(1 + e^0.8) = 1.171101.
    base = math.log(1 + math.exp(-1)) + math.log(2)
    expected = base + math.log(1 + math.exp(0.8)) / 2
    assert mixed(loss="sigmoid") == pytest.approx(expected, abs=1e-6)  # 1.591959


def test_mixed_log_q_is_each_candidates_probability_under_the_mixture():
    # B = 2, N = 1: q*(y) = (2 q_batch(y) + 1 q_corpus(y)) / 3, corpus of 10 stories.
    # In-batch a: q_batch 0.5 -> (1.0 + 0.1) / 3; b: q_batch 0.25 -> (0.5 + 0.1) / 3 = 0.2.
    # The corpus sample is a again: the same (1.0 + 0.1) / 3, whichever sampler drew it.
    batch, corpus = mixed_log_q(np.log([0.5, 0.25]), np.log([0.1]), np.log([0.5]))
    np.testing.assert_allclose(np.exp(batch), [1.1 / 3, 0.2], rtol=1e-6)
    np.testing.assert_allclose(np.exp(corpus), [1.1 / 3], rtol=1e-6)


def test_mixed_negatives_subtract_every_candidates_log_q():
    # Row 1 (row 0's corpus entry is masked): logits [0, 1, 0.8] - log q* with
    # q* = [1.1/3, 0.2, 1.1/3] as above; row 0: [1, 0] - log q*[:2].
    log_q = np.log([1.1 / 3, 0.2, 1.1 / 3])
    row0 = np.array([1.0, 0.0]) - log_q[:2]
    row1 = np.array([0.0, 1.0, 0.8]) - log_q
    expected = ((np.log(np.exp(row0).sum()) - row0[0]) + (np.log(np.exp(row1).sum()) - row1[1])) / 2
    got = mixed(candidate_log_q=log_q[:2].astype(np.float32), extra_candidate_log_q=log_q[2:].astype(np.float32))
    assert got == pytest.approx(float(expected), abs=1e-6)
    with pytest.raises(ValueError, match="extra_candidate_log_q is required"):
        mixed(candidate_log_q=log_q[:2].astype(np.float32))


def test_pointwise_loss_has_no_in_batch_negatives():
    # Only the diagonal counts: logits [1, 1]; row 0 engaged -> log(1 + e^-1), row 1 not ->
    # log(1 + e^1). Mean 0.813262.
    got = float(pointwise_loss(Q, C, np.array([1.0, 0.0], np.float32), temperature=1.0))
    assert got == pytest.approx((math.log(1 + math.exp(-1)) + math.log(1 + math.exp(1))) / 2, abs=1e-6)


def test_unknown_loss_is_refused():
    with pytest.raises(ValueError, match="'sigmoid' or 'softmax'"):
        loss(loss="hinge")


def test_the_removed_logq_correction_key_names_its_replacement():
    from config import ConfigError, load_config

    with pytest.raises(ConfigError, match="replaced by model.logq_strength"):
        load_config(overrides=["model.logq_correction=false"], environ={})
    assert load_config(overrides=["model.logq_strength=0"], environ={}).model.logq_strength == 0.0
