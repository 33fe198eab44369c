"""Retrieval metrics on cases small enough to check by hand, and the baselines."""

import math

import numpy as np
import pytest

from models.baselines import ImplicitALS, Popularity
from models.evaluation import EvaluationSet, evaluate

# Two users, four candidates. Scores rank candidates for user 0 as 3 > 2 > 1 > 0 and for
# user 1 as 0 > 1 > 2 > 3.
SCORES = np.array([[0.0, 1.0, 2.0, 3.0], [3.0, 2.0, 1.0, 0.0]])


def scorer(users):
    return SCORES[users]


def test_metrics_on_a_hand_worked_case():
    data = EvaluationSet(
        users=np.array([0, 1]),
        test_events=[np.array([2, 0]), np.array([3])],
        seen=[np.array([3]), np.array([], dtype=int)],
        n_candidates=4,
        match_attributes={"language": (np.array(["en", "fr"]), np.array(["en", "en", "fr", "fr"]))},
    )
    m = evaluate(scorer, data, ks=[1, 2])
    # top_k_accuracy counts test events, seen stories included: user 0's ranking 3,2,1,0
    # puts story 2 at rank 2, story 0 at rank 4; user 1's ranking 0,1,2,3 puts 3 at rank 4.
    assert m["top_k_accuracy@1"] == 0.0
    assert m["top_k_accuracy@2"] == pytest.approx(1 / 3)
    # recall removes seen stories: user 0 ranks 2,1,0 -> @1 finds 1 of {2, 0}, @2 still 1.
    # User 1 ranks 0,1,2,3 -> finds none of {3} in the top 2. Mean over users.
    assert m["recall@1"] == pytest.approx((1 / 2 + 0) / 2)
    assert m["recall@2"] == pytest.approx((1 / 2 + 0) / 2)
    # NDCG@10, binary: user 0 hits at positions 1 and 3 of (2, 1, 0); ideal is positions 1, 2.
    user0 = (1 + 1 / math.log2(4)) / (1 + 1 / math.log2(3))
    user1 = (1 / math.log2(5)) / 1.0  # story 3 at position 4
    assert m["ndcg@10"] == pytest.approx((user0 + user1) / 2)
    # Coverage @1: stories 2 and 0 are someone's top 1: half of the four candidates.
    assert m["coverage@1"] == 0.5
    # Language @1: user 0 (en) gets story 2 (fr), user 1 (fr) gets story 0 (en).
    assert m["language_match@1"] == 0.0
    assert m["eval_events"] == 3.0 and m["eval_users"] == 2.0


def test_oracle_recall_compares_with_the_oracles_top_k():
    data = EvaluationSet(
        users=np.array([0]),
        test_events=[np.array([1])],
        seen=[np.array([], dtype=int)],
        n_candidates=4,
        oracle=lambda users: np.array([[3.0, 2.0, 1.0, 0.0]])[np.zeros(len(users), int)],
    )
    # Model top 2 = {3, 2}, oracle top 2 = {0, 1}: no overlap; top 4 = everything.
    m = evaluate(scorer, data, ks=[2, 4])
    assert m["oracle_recall@2"] == 0.0 and m["oracle_recall@4"] == 1.0


def test_popularity_and_als_baselines():
    # Users 0 and 1 engage with items 0 and 1, users 2 and 3 with items 2 and 3.
    users = np.array([0, 0, 1, 1, 2, 2, 3, 3, 0])
    items = np.array([0, 1, 0, 1, 2, 3, 2, 3, 0])
    popularity = Popularity(items, 4)
    assert popularity(np.array([2]))[0].tolist() == [3.0, 2.0, 2.0, 2.0]
    als = ImplicitALS(factors=2, iterations=10, seed=0).fit(users, items, 4, 4)
    scores = als(np.arange(4))
    # Each block's users score their own block's items above the other block's.
    assert scores[0, :2].min() > scores[0, 2:].max()
    assert scores[3, 2:].min() > scores[3, :2].max()


def test_cold_start_recall_counts_only_stories_without_training_events():
    # Candidates 2 and 3 are cold. User 0 (ranking 3,2,1,0; seen 3 removed -> 2,1,0) has
    # relevant {2, 0}: cold relevant {2}, found at rank 1. User 1 (ranking 0,1,2,3) has
    # relevant {3}: cold, at rank 4.
    data = EvaluationSet(
        users=np.array([0, 1]),
        test_events=[np.array([2, 0]), np.array([3])],
        seen=[np.array([3]), np.array([], dtype=int)],
        n_candidates=4,
        cold=np.array([False, False, True, True]),
    )
    m = evaluate(scorer, data, ks=[1, 4])
    assert m["cold_recall@1"] == pytest.approx((1 + 0) / 2) and m["cold_recall@4"] == 1.0
    assert m["cold_eval_users"] == 2.0 and m["cold_eval_positives"] == 2.0
    assert m["eval_positives"] == 3.0  # {2, 0} and {3}


def test_new_and_returning_users_are_measured_apart():
    # Same rankings as above. User 0 (returning) finds relevant {2, 0} at ranks 1 and 3;
    # user 1 (new: no training event) finds {3} at rank 4.
    data = EvaluationSet(
        users=np.array([0, 1]),
        test_events=[np.array([2, 0]), np.array([3])],
        seen=[np.array([3]), np.array([], dtype=int)],
        n_candidates=4,
        new_users=np.array([False, True]),
    )
    m = evaluate(scorer, data, ks=[1, 4])
    assert m["new_user_eval_users"] == 1.0 and m["returning_user_eval_users"] == 1.0
    assert m["returning_user_recall@1"] == pytest.approx(0.5) and m["new_user_recall@1"] == 0.0
    assert m["new_user_recall@4"] == 1.0
    # The segments split the overall mean: (0.5 + 0) / 2.
    assert m["recall@1"] == pytest.approx((m["new_user_recall@1"] + m["returning_user_recall@1"]) / 2)


def test_intervals_and_paired_differences_say_whether_a_win_is_more_than_chance():
    from models.evaluation import Measurement, bootstrap_interval, paired_difference

    assert bootstrap_interval(np.full(50, 0.3), 200) == pytest.approx((0.3, 0.3))
    rng = np.random.default_rng(0)
    values = rng.uniform(0, 1, 400)
    lo, hi = bootstrap_interval(values, 1000)
    assert lo < values.mean() < hi and hi - lo == pytest.approx(2 * 1.96 * values.std() / np.sqrt(400), rel=0.15)
    a = Measurement({}, {"recall@10": values})
    b = Measurement({}, {"recall@10": values - 0.05 + rng.normal(0, 0.01, 400)})  # better by 0.05 on every user
    win = paired_difference(a, b, "recall@10", 500)
    assert win["difference"] == pytest.approx(0.05, abs=0.005) and win["significant"] == 1.0 and win["lo"] > 0
    noise = Measurement({}, {"recall@10": rng.permutation(values)})  # same distribution, other users' values
    assert paired_difference(a, noise, "recall@10", 500)["significant"] == 0.0
    with pytest.raises(ValueError, match="not on the same users"):
        paired_difference(a, Measurement({}, {"recall@10": values[:10]}), "recall@10")


def test_evaluate_adds_bootstrap_intervals_and_sizes_next_to_every_per_user_metric():
    data = EvaluationSet(
        users=np.array([0, 1]),
        test_events=[np.array([2, 0]), np.array([3])],
        seen=[np.array([3]), np.array([], dtype=int)],
        n_candidates=4,
    )
    m = evaluate(scorer, data, ks=[1, 2], bootstrap=200)
    for name in ("recall@1", "recall@2", "ndcg@10"):
        assert m[f"{name}_lo"] <= m[name] <= m[f"{name}_hi"]
    assert m["eval_users"] == 2.0 and m["eval_positives"] == 3.0
