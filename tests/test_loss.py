"""The in-batch losses on a batch small enough to work out by hand."""

import math

import numpy as np
import pytest

from models.loss import in_batch_loss, pointwise_loss

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
