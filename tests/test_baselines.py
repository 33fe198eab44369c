"""The baselines on matrices small enough to work out by hand."""

import math

import numpy as np
import pytest

from models.baselines import (
    ALS_GRID,
    COLD_ITEM_SCORE,
    EASE,
    EASE_GRID,
    ITEM_KNN_GRID,
    ImplicitALS,
    ItemKNN,
    Popularity,
    RecentPopularity,
    TooManyItemsError,
    choose_by_validation,
)
from models.evaluation import EvaluationSet

# Four users, three items, and item 3 which nobody engaged with (cold):
#        item 0  1  2
#   u0:       1  1  0
#   u1:       1  0  0
#   u2:       0  1  1
#   u3:       1  1  1
# User 3's repeat on item 0 must count once (the matrix is binarised).
USERS = np.array([0, 0, 1, 2, 2, 3, 3, 3, 3])
ITEMS = np.array([0, 1, 0, 1, 2, 0, 1, 2, 0])
N_USERS, N_ITEMS = 4, 4


def test_ease_matches_the_closed_form_worked_by_hand():
    # G = XᵀX = [[3, 2, 1], [2, 3, 2], [1, 2, 2]]; with l2 = 1, G + I = [[4, 2, 1], [2, 4, 2],
    # [1, 2, 3]], determinant 4·8 - 2·4 + 1·0 = 24, so P = adj/24 = [[8, -4, 0], [-4, 11, -6],
    # [0, -6, 12]] / 24. B_ij = -P_ij / P_jj, diag 0:
    #   B = [[0, 4/11, 0], [1/2, 0, 1/2], [0, 6/11, 0]]
    # (items 0 and 2 co-occur once, but item 1 explains it: B_02 = 0). The cold item 3 adds
    # a zero row and column to G, which leaves the rest of P alone.
    expected = np.array([[0, 4 / 11, 0], [1 / 2, 0, 1 / 2], [0, 6 / 11, 0]])
    for float64_max_items in (4096, 0):  # float64, then float32
        ease = EASE(l2=1.0, float64_max_items=float64_max_items).fit(USERS, ITEMS, N_USERS, N_ITEMS)
        np.testing.assert_allclose(ease.weights[:3, :3], expected, rtol=1e-5, atol=1e-6)
        assert np.all(np.diag(ease.weights) == 0)
        scores = ease(np.array([1, 0]))
        # u1 = [1, 0, 0] -> row 0 of B; u0 = [1, 1, 0] -> rows 0 + 1.
        np.testing.assert_allclose(scores[:, :3], [[0, 4 / 11, 0], [1 / 2, 4 / 11, 1 / 2]], rtol=1e-5, atol=1e-6)
        assert scores[:, 3].tolist() == [COLD_ITEM_SCORE, COLD_ITEM_SCORE] and np.isfinite(scores).all()
        assert scores.dtype == np.float32 and scores.shape == (2, N_ITEMS)


def test_ease_refuses_a_catalogue_above_max_items_and_says_what_to_do():
    with pytest.raises(TooManyItemsError, match=r"n_items=4 exceeds max_items=3.*ItemKNN.*EASE\(max_items=\.\.\.\)"):
        EASE(max_items=3).fit(USERS, ITEMS, N_USERS, N_ITEMS)
    with pytest.raises(ValueError, match="n_items=30,000 exceeds max_items=20,000"):
        EASE().fit(np.array([0]), np.array([0]), 1, 30_000)  # refused before any allocation


def test_item_knn_cosine_with_shrink_worked_by_hand():
    # Item user-counts 3, 3, 2; co-occurrences (0,1) = 2, (0,2) = 1, (1,2) = 2. With shrink 1:
    #   s01 = 2 / (√(3·3) + 1) = 1/2,  s02 = 1 / (√6 + 1) ≈ 0.290,  s12 = 2 / (√6 + 1) ≈ 0.580.
    s01, s02, s12 = 0.5, 1 / (math.sqrt(6) + 1), 2 / (math.sqrt(6) + 1)
    every = ItemKNN(neighbors=10, shrink=1.0).fit(USERS, ITEMS, N_USERS, N_ITEMS)
    np.testing.assert_allclose(
        every.similarity.toarray()[:3, :3], [[0, s01, s02], [s01, 0, s12], [s02, s12, 0]], rtol=1e-6
    )
    # One neighbour per target item (column): 0 keeps 1 (1/2 > 0.29), 1 keeps 2, 2 keeps 1.
    one = ItemKNN(neighbors=1, shrink=1.0).fit(USERS, ITEMS, N_USERS, N_ITEMS)
    np.testing.assert_allclose(one.similarity.toarray()[:3, :3], [[0, 0, 0], [s01, 0, s12], [0, s12, 0]], rtol=1e-6)
    # u0 = [1, 1, 0] sums rows 0 and 1; u1 = [1, 0, 0] has only item 0, nobody's neighbour.
    scores = one(np.array([0, 1]))
    np.testing.assert_allclose(scores[:, :3], [[s01, 0, s12], [0, 0, 0]], rtol=1e-6)
    assert scores[:, 3].tolist() == [COLD_ITEM_SCORE, COLD_ITEM_SCORE]
    # Without shrinkage: plain cosine, s01 = 2/3.
    assert ItemKNN(neighbors=10, shrink=0.0).fit(USERS, ITEMS, N_USERS, N_ITEMS).similarity[0, 1] == pytest.approx(
        2 / 3
    )


def test_item_knn_in_blocks_of_one_item_equals_one_block():
    rng = np.random.default_rng(3)
    users, items = rng.integers(0, 40, 300), rng.integers(0, 25, 300)
    whole = ItemKNN(neighbors=5, shrink=2.0).fit(users, items, 40, 25)
    blocked = ItemKNN(neighbors=5, shrink=2.0, block_entries=1).fit(users, items, 40, 25)
    assert (whole.similarity != blocked.similarity).nnz == 0
    assert np.all(np.diff(whole.similarity.tocsc().indptr) <= 5)  # at most 5 neighbours per target


def test_recent_popularity_ranks_the_window_first_then_all_time():
    # as_of = 100, window 10 s: [90, 100). Story 0: five old events (all-time favourite).
    # Story 1: two in the window. Story 2: one at exactly 90 (in), one old, one at 100 (out:
    # the window is open at as_of) and one later. Story 3: nothing (cold). Story 4: one old.
    stories = np.array([0, 0, 0, 0, 0, 1, 1, 2, 2, 2, 2, 4])
    ts = np.array([0, 1, 2, 3, 4, 95, 99, 90, 50, 100, 200, 10])
    recent = RecentPopularity(stories, ts, 5, as_of=100, window_s=10)
    assert recent.recent_counts.tolist() == [0, 2, 1, 0, 0]
    assert recent.counts.tolist() == [5, 2, 2, 0, 1]  # events before as_of only
    scores = recent(np.array([7, 8]))
    assert scores.shape == (2, 5) and np.isfinite(scores).all()
    # Recent 2 > recent 1 > (no recent: all-time 5 > all-time 1) > cold.
    assert np.argsort(-scores[0], kind="stable").tolist() == [1, 2, 0, 4, 3]
    assert scores[0, 3] == COLD_ITEM_SCORE
    # All-time popularity ranks the old favourite first.
    assert np.argmax(Popularity(stories[ts < 100], 5)(np.array([0]))[0]) == 0
    with pytest.raises(ValueError, match="window_s=0"):
        RecentPopularity(stories, ts, 5, as_of=100, window_s=0)


def test_popularity_gives_cold_items_the_cold_score():
    scores = Popularity(np.array([0, 0, 2]), 4)(np.array([0]))[0]
    assert scores.tolist() == [2.0, COLD_ITEM_SCORE, 1.0, COLD_ITEM_SCORE]


def _reference_als(users, items, n_users, n_items, factors, regularization, alpha, iterations, seed):
    """ImplicitALS as it was before c1243e3: rows found by a mask, the system built as (yᵀ·w) @ y."""
    rng = np.random.default_rng(seed)
    pairs, counts = np.unique(np.stack([users, items], axis=1), axis=0, return_counts=True)
    confidence = 1.0 + alpha * counts
    user_factors = rng.normal(scale=0.01, size=(n_users, factors))
    item_factors = rng.normal(scale=0.01, size=(n_items, factors))

    def solve(fixed, keys, others, n):
        gram, out = fixed.T @ fixed, np.zeros((n, factors))
        for row in range(n):
            mine = keys == row
            if mine.any():
                y, c = fixed[others[mine]], confidence[mine]
                out[row] = np.linalg.solve(gram + (y.T * (c - 1.0)) @ y + regularization * np.eye(factors), y.T @ c)
        return out

    for _ in range(iterations):
        user_factors = solve(item_factors, pairs[:, 0], pairs[:, 1], n_users)
        item_factors = solve(user_factors, pairs[:, 1], pairs[:, 0], n_items)
    return user_factors, item_factors


def test_als_equals_the_reference_implementation():
    rng = np.random.default_rng(1)
    # Skewed history lengths, repeats (confidence > 1 + alpha), user 29 and item 19
    # without positives.
    users = rng.integers(0, 29, 400) ** 2 // 29
    items = rng.integers(0, 19, 400)
    params = dict(factors=4, regularization=0.1, alpha=5.0, iterations=5, seed=7)
    als = ImplicitALS(**params).fit(users, items, 30, 20)
    user_factors, item_factors = _reference_als(users, items, 30, 20, **params)
    np.testing.assert_allclose(als.user_factors, user_factors, rtol=1e-7, atol=1e-10)
    np.testing.assert_allclose(als.item_factors, item_factors, rtol=1e-7, atol=1e-10)
    scores = als(np.arange(30))
    assert np.all(scores[:, 19] == COLD_ITEM_SCORE) and np.all(scores[29, :19] == 0.0)


def test_choose_by_validation_keeps_the_truly_better_params_and_every_trial():
    # Both validation users' only test story is 2; nothing is seen. A scorer whose favourite
    # is 2 has recall@1 = 1, every other favourite 0.
    validation = EvaluationSet(
        users=np.array([0, 1]), test_events=[np.array([2]), np.array([2])], seen=[np.array([], int)] * 2, n_candidates=4
    )

    def fit(params):
        return lambda users: np.tile(np.eye(4)[params["favourite"]], (len(users), 1))

    grid = [{"favourite": f} for f in (0, 1, 2, 3, 2)]
    best, params, trials = choose_by_validation(grid, fit, validation, metric="recall@1")
    assert params == {"favourite": 2}
    assert np.argmax(best(np.array([0]))[0]) == 2
    assert [t["params"]["favourite"] for t in trials] == [0, 1, 2, 3, 2]
    assert [t["metrics"]["recall@1"] for t in trials] == [0.0, 0.0, 1.0, 0.0, 1.0]
    assert all(t["fit_seconds"] >= 0 and t["evaluate_seconds"] >= 0 for t in trials)
    with pytest.raises(ValueError, match="'recall@9'.*4 candidates"):
        choose_by_validation(grid, fit, validation, metric="recall@9")


def test_default_grids_and_labels():
    assert len(ALS_GRID) <= 9 and len(EASE_GRID) == 5 and len(ITEM_KNN_GRID) == 4
    for cls in (Popularity, RecentPopularity, EASE, ItemKNN, ImplicitALS):
        assert cls.scores_cold_items is False and cls.name
    assert len({cls.name for cls in (Popularity, RecentPopularity, EASE, ItemKNN, ImplicitALS)}) == 5


def test_users_without_history_get_the_fallback_ranking_instead_of_index_order():
    from models.baselines import WithColdUserFallback

    # User 0 engaged with item 1; user 1 has no training positive. ALS-like scores are
    # zeros for user 1 (index order); popularity says item 2 > item 0 > item 1.
    personal = lambda users: np.array([[0.1, 0.9, 0.2], [0.0, 0.0, 0.0]], dtype=np.float32)[users]  # noqa: E731
    popularity = lambda users: np.tile(np.array([2.0, 1.0, 3.0], dtype=np.float32), (len(users), 1))  # noqa: E731
    scorer = WithColdUserFallback(personal, warm_users=np.array([True, False]), fallback=popularity)
    np.testing.assert_allclose(scorer(np.array([0, 1])), [[0.1, 0.9, 0.2], [2.0, 1.0, 3.0]], rtol=1e-6)
    np.testing.assert_array_equal(scorer(np.array([1])), [[2.0, 1.0, 3.0]])
