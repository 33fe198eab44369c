"""Baselines the model must beat, fitted on the same positive training events.

Every baseline is a *scorer* (`models.evaluation.Scorer`): user rows [U] -> scores
[U, n_candidates], fitted on the positive training events the two-tower model learns from,
given as (user row, candidate position) pairs, so it is measured on the same split and the
same candidates:

- `Popularity`: all-time counts of positive events.
- `RecentPopularity`: counts in a recent window ("trending now"), ties broken by all time.
- `EASE` (Steck 2019): closed-form item-item linear autoencoder; dense, so bounded in items.
- `ItemKNN`: cosine item-item neighbourhoods with shrinkage; sparse, for large catalogues.
- `ImplicitALS` (Hu, Koren & Volinsky 2008): matrix factorisation with confidence weights.

`choose_by_validation` fits one of them per point of a hyper-parameter grid and keeps the
best on a validation split; `ALS_GRID`, `EASE_GRID` and `ITEM_KNN_GRID` are the defaults.

None of these can score a cold item (one with no positive training event): it has no
counts, no column in the user x item matrix and no learned factor. Every baseline gives
such an item `COLD_ITEM_SCORE`, a finite score below any learned one, so a top K stays a
total ranking (cold items come last, in index order) and `scores_cold_items` is False.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import scipy.linalg
import scipy.sparse

from models.evaluation import EvaluationSet, Scorer, evaluate

log = logging.getLogger(__name__)

# Below every learned score (counts, similarities, dot products are all far above), finite
# in float32 and a sum of a few of them still is; a power of two, so it is the same number
# in float32 and float64 (-1.27e30).
COLD_ITEM_SCORE = -(2.0**100)

# ALS is the costly one: on a MovieLens-1M-sized matrix (6,000 x 3,700, 518k positive
# pairs) a 15-iteration fit took 4.8 / 12 / 36 CPU-seconds at 32 / 64 / 128 factors (one
# BLAS thread), about 160 s for this grid, so it stays at 9 trials; alpha keeps its default.
ALS_GRID: tuple[dict[str, Any], ...] = tuple(
    {"factors": f, "regularization": r} for f in (32, 64, 128) for r in (0.01, 0.1, 1.0)
)
# Steck (2019) reports the best lambda between 100 and 1000 on ML-20M, Netflix and MSD;
# the grid brackets that for smaller catalogues (less data: stronger regularisation).
EASE_GRID: tuple[dict[str, Any], ...] = tuple({"l2": l2} for l2 in (10.0, 100.0, 500.0, 1000.0, 3000.0))
ITEM_KNN_GRID: tuple[dict[str, Any], ...] = tuple({"neighbors": k, "shrink": s} for k in (50, 200) for s in (0.0, 10.0))

# Working-memory bound of the blocked computations (EASE's Gram rows, kNN's similarity
# rows): this many float64 entries per block, 128 MB.
_BLOCK_ENTRIES = 1 << 24


class Baseline:
    """What the evaluation table needs to know about a baseline besides its scores."""

    name: str = "baseline"
    # False: an item with no positive training event gets COLD_ITEM_SCORE, not a learned
    # score ("cannot score cold items"). A content-based model would say True.
    scores_cold_items: bool = False

    def __call__(self, users: np.ndarray) -> np.ndarray:  # users: [U] -> [U, n_candidates]
        raise NotImplementedError


class Popularity(Baseline):
    """Every user gets the candidates with the most positive training events."""

    name = "popularity"

    def __init__(self, story_positions: np.ndarray, n_candidates: int):
        """story_positions: [n] candidate position of each positive training event."""
        self.counts = np.bincount(story_positions, minlength=n_candidates).astype(np.float32)
        self.scores = np.where(self.counts > 0, self.counts, np.float32(COLD_ITEM_SCORE)).astype(np.float32)

    def __call__(self, users: np.ndarray) -> np.ndarray:
        return np.broadcast_to(self.scores, (len(users), len(self.scores)))


class RecentPopularity(Baseline):
    """The candidates with the most positive events in [as_of - window_s, as_of).

    Short videos live for days: the all-time most popular stories are mostly ones whose
    audience has moved on, while what is being watched in the last hours is the best
    content-free guess of what will be watched next. A candidate set of eligible stories
    (the ones the index would hold) ranked by recent positives is what a "trending" shelf
    serves, and the popularity baseline a retrieval model has to beat to earn its cost.

    Candidates with the same recent count (notably the many with none) are ordered by their
    all-time count, so the ranking is total over every story with a positive event; the
    scores are therefore ranks (0 = least popular), not counts: `recent_counts` and
    `counts` hold the counts. Only events before `as_of` are counted, all-time ones too.
    """

    name = "recent_popularity"

    def __init__(
        self, story_positions: np.ndarray, event_ts: np.ndarray, n_candidates: int, as_of: float, window_s: float
    ):
        """story_positions, event_ts: [n] candidate position and time (seconds) of each
        positive training event; as_of: end of the window (exclusive), in the same unit."""
        story_positions, event_ts = np.asarray(story_positions), np.asarray(event_ts)
        if story_positions.shape != event_ts.shape:
            raise ValueError(
                f"story_positions {story_positions.shape} and event_ts {event_ts.shape} must have the same shape: one time per positive event"
            )
        if not window_s > 0:
            raise ValueError(f"window_s={window_s!r}: the recent window must be a positive number of seconds")
        before = event_ts < as_of
        recent = before & (event_ts >= as_of - window_s)
        self.as_of, self.window_s = as_of, window_s
        self.counts = np.bincount(story_positions[before], minlength=n_candidates)
        self.recent_counts = np.bincount(story_positions[recent], minlength=n_candidates)
        # Dense rank of (recent, all-time) pairs: equal pairs tie, every other pair is
        # strictly ordered; ranks up to n_candidates are exact in float32.
        keys = self.recent_counts.astype(np.int64) * (int(self.counts.max(initial=0)) + 1) + self.counts
        _, rank = np.unique(keys, return_inverse=True)
        self.scores = np.where(self.counts > 0, rank, COLD_ITEM_SCORE).astype(np.float32)

    def __call__(self, users: np.ndarray) -> np.ndarray:
        return np.broadcast_to(self.scores, (len(users), len(self.scores)))


class TooManyItemsError(ValueError):
    """EASE refuses a catalogue whose dense item x item matrices would not fit."""


class EASE(Baseline):
    """Embarrassingly Shallow Autoencoder (Steck 2019): scores = X[users] @ B.

    X is the binarised user x item matrix of positive training events; B is the item x item
    weight matrix minimising ||X - XB||² + l2·||B||² subject to diag(B) = 0, in closed form:
    P = (XᵀX + l2·I)⁻¹, B = I - P·diagMat(1/diag(P)), i.e. B_ij = -P_ij / P_jj, B_jj = 0.

    It needs two dense n_items x n_items matrices at once (the Gram matrix, inverted in
    place, and B), so `fit` refuses catalogues above `max_items` (20,000 items: 1.6 GB per
    matrix in float32) with `TooManyItemsError`: use `ItemKNN` there. The solve is in
    float64 up to `float64_max_items` items, float32 above (half the memory; the ranking
    barely moves at l2 >= 10, which bounds the condition number).
    """

    name = "ease"

    def __init__(self, l2: float = 500.0, max_items: int = 20_000, float64_max_items: int = 4096):
        if not l2 > 0:
            raise ValueError(f"l2={l2!r}: EASE needs a positive L2 penalty (Steck's lambda, typically 100-1000)")
        self.l2, self.max_items, self.float64_max_items = l2, max_items, float64_max_items

    def fit(self, users: np.ndarray, items: np.ndarray, n_users: int, n_items: int) -> EASE:
        """users, items: [n] user row and candidate position of each positive event."""
        if n_items > self.max_items:
            gb = 2 * n_items**2 * 4 / 1e9
            raise TooManyItemsError(
                f"EASE over n_items={n_items:,} exceeds max_items={self.max_items:,}: it needs two dense "
                f"{n_items:,} x {n_items:,} matrices ({gb:.1f} GB in float32). Use ItemKNN for this "
                f"catalogue, or raise EASE(max_items=...) if the machine has the memory."
            )
        self.x = _binary_matrix(users, items, n_users, n_items)
        dtype = np.float64 if n_items <= self.float64_max_items else np.float32
        gram = _gram(self.x, dtype)
        gram[np.diag_indices(n_items)] += self.l2
        # The Gram matrix is symmetric, so its transpose is the same matrix in Fortran
        # order, which LAPACK inverts in place (no second n x n copy).
        p = scipy.linalg.inv(gram.T, overwrite_a=True, check_finite=False)
        del gram
        p /= -np.diag(p)[np.newaxis, :]
        p[np.diag_indices(n_items)] = 0.0
        self.weights = p  # B: [n_items, n_items]
        self.warm = np.diff(self.x.tocsc().indptr) > 0
        return self

    def __call__(self, users: np.ndarray) -> np.ndarray:
        scores = np.asarray(self.x[users] @ self.weights, dtype=np.float32)
        scores[:, ~self.warm] = COLD_ITEM_SCORE
        return scores


class ItemKNN(Baseline):
    """Item-based nearest neighbours: scores = X[users] @ S.

    S_ij = |users(i) ∩ users(j)| / (sqrt(|users(i)|·|users(j)|) + shrink), the cosine of
    the binarised item columns shrunk towards 0 when the items have few users in common
    with few users each (Koren 2008's shrinkage). Each candidate j keeps its `neighbors`
    most similar items i (column j of S, self excluded), so a user's score for j sums the
    similarities of the items in their history that are among j's neighbours.

    The similarities are computed for blocks of candidates at a time, sparse, with each
    block's co-occurrence entries bounded by `block_entries`: memory is O(n_items ·
    neighbors) plus one block, whatever the catalogue (20k-200k items and more).
    """

    name = "item_knn"

    def __init__(self, neighbors: int = 200, shrink: float = 10.0, block_entries: int = _BLOCK_ENTRIES):
        if neighbors < 1:
            raise ValueError(f"neighbors={neighbors!r}: ItemKNN keeps at least one neighbour per item")
        if shrink < 0:
            raise ValueError(f"shrink={shrink!r}: the shrinkage term must be >= 0")
        self.neighbors, self.shrink, self.block_entries = neighbors, shrink, block_entries

    def fit(self, users: np.ndarray, items: np.ndarray, n_users: int, n_items: int) -> ItemKNN:
        """users, items: [n] user row and candidate position of each positive event."""
        self.x = _binary_matrix(users, items, n_users, n_items)
        by_item = self.x.T.tocsr()  # [n_items, n_users]
        norms = np.sqrt(np.diff(by_item.indptr)).astype(np.float64)
        # Upper bound on the co-occurrence entries of each item's row: the history lengths
        # of its users summed.
        work = by_item @ np.diff(self.x.indptr).astype(np.float64)
        targets, neighbours, values = [], [], []
        for start, stop in _blocks(work, self.block_entries):
            co = (by_item[start:stop] @ self.x).tocoo()  # [block, n_items] co-occurrence counts
            rows, cols = co.row, co.col
            target = rows + start
            sim = co.data / (norms[target] * norms[cols] + self.shrink)
            keep = (cols != target) & (sim > 0)
            rows, cols, target, sim = rows[keep], cols[keep], target[keep], sim[keep]
            # Per target: most similar first (ties by neighbour index), keep the first k.
            order = np.lexsort((cols, -sim, rows))
            rows, cols, target, sim = rows[order], cols[order], target[order], sim[order]
            rank = np.arange(len(rows)) - np.searchsorted(rows, rows, side="left")
            top = rank < self.neighbors
            targets.append(target[top]), neighbours.append(cols[top]), values.append(sim[top])
        self.similarity = scipy.sparse.csr_matrix(
            (np.concatenate(values).astype(np.float32), (np.concatenate(neighbours), np.concatenate(targets))),
            shape=(n_items, n_items),
        )  # S: [neighbour i, target j]
        self.warm = norms > 0
        return self

    def __call__(self, users: np.ndarray) -> np.ndarray:
        scores = (self.x[users] @ self.similarity).toarray().astype(np.float32, copy=False)
        scores[:, ~self.warm] = COLD_ITEM_SCORE
        return scores


class ImplicitALS(Baseline):
    """Implicit-feedback ALS (Hu, Koren & Volinsky 2008): scores = user_factors @ item_factors.T.

    Minimises Σ c_ui (p_ui - x_u·y_i)² + regularization·(Σ|x_u|² + Σ|y_i|²) over every user
    x item cell, with preference p_ui = 1 for a positive pair (else 0) and confidence
    c_ui = 1 + alpha·(number of positive events of the pair) (else 1).

    Each half-step solves one f x f system per user (per item): (YᵀY + Yᵤᵀ(Cᵤ - I)Yᵤ + λI)
    x_u = YᵤᵀCᵤ·1, costing n_u·f² to build and f³ to solve: BLAS work, not Python overhead
    (about 35 µs a row), so batching the rows into stacked solves did not pay (measured
    4.5 / 13.7 / 45.6 CPU-s against 4.7 / 11.8 / 39.9 for the row loop at 32 / 64 / 128
    factors); building the system as a symmetric rank-k update (zᵀz) did, 10% at 128.
    """

    name = "als"

    def __init__(
        self, factors: int = 32, regularization: float = 0.05, alpha: float = 10.0, iterations: int = 15, seed: int = 0
    ):
        if alpha < 0:
            raise ValueError(f"alpha={alpha!r}: the confidence 1 + alpha·count must not fall below 1; use alpha >= 0")
        self.factors, self.regularization, self.alpha = factors, regularization, alpha
        self.iterations, self.seed = iterations, seed

    def fit(self, users: np.ndarray, items: np.ndarray, n_users: int, n_items: int) -> ImplicitALS:
        """users, items: [n] row indices of positive events (repeats add up)."""
        users, items = _check_positives(users, items, n_users, n_items)
        rng = np.random.default_rng(self.seed)
        pair_keys, counts = np.unique(users * n_items + items, return_counts=True)  # sorted by (user, item)
        pair_users, pair_items = pair_keys // n_items, pair_keys % n_items
        confidence = 1.0 + self.alpha * counts
        self.user_factors = rng.normal(scale=0.01, size=(n_users, self.factors))
        self.item_factors = rng.normal(scale=0.01, size=(n_items, self.factors))
        by_item = np.argsort(pair_items, kind="stable")
        by_user_rows = _Rows(pair_users, pair_items, confidence, n_users)
        by_item_rows = _Rows(pair_items[by_item], pair_users[by_item], confidence[by_item], n_items)
        for _ in range(self.iterations):
            self.user_factors = self._solve(self.item_factors, by_user_rows)
            self.item_factors = self._solve(self.user_factors, by_item_rows)
        self.warm = by_item_rows.lengths > 0
        return self

    def _solve(self, fixed: np.ndarray, rows: _Rows) -> np.ndarray:
        """The least-squares factors of every row given the other side's `fixed` factors."""
        base = fixed.T @ fixed + self.regularization * np.eye(self.factors)
        out = np.zeros((rows.n, self.factors))  # rows with no positive pair keep the zero vector
        # One row at a time: the f x n_u by n_u x f product dominates, and numpy sends a 2-D
        # z.T @ z to BLAS's symmetric rank-k update (half a general product's work); stacked
        # [batch, f, n_u] products do not get BLAS and measured 15-20% slower overall.
        for row in np.flatnonzero(rows.lengths):
            part = slice(rows.starts[row], rows.starts[row] + rows.lengths[row])
            y, c = fixed[rows.others[part]], rows.confidence[part]
            z = y * np.sqrt(c - 1.0)[:, np.newaxis]
            out[row] = np.linalg.solve(base + z.T @ z, y.T @ c)
        return out

    def __call__(self, users: np.ndarray) -> np.ndarray:
        scores = (self.user_factors[users] @ self.item_factors.T).astype(np.float32)
        scores[:, ~self.warm] = COLD_ITEM_SCORE
        return scores


class WithColdUserFallback(Baseline):
    """A personalised baseline that ranks users without a training positive by `fallback`.

    ALS, EASE and item-kNN have nothing to say about such a user (no factor, no row of X):
    their scores are all zero and the ranking is index order, a straw man. On a time
    split most held-out users can be new (MovieLens: people rate in one sitting), so the
    fair baseline is the usual production one: the personalised model where there is
    history, (recent) popularity where there is none.
    """

    def __init__(self, scorer: Scorer, warm_users: np.ndarray, fallback: Scorer):
        """warm_users: [n_users] bool, True where the user has a training positive."""
        self.scorer, self.warm_users, self.fallback = scorer, np.asarray(warm_users, dtype=bool), fallback
        self.name = getattr(scorer, "name", "baseline")

    def __call__(self, users: np.ndarray) -> np.ndarray:
        users = np.asarray(users)
        scores = np.array(self.scorer(users), dtype=np.float32, copy=True)
        cold = ~self.warm_users[users]
        if cold.any():
            scores[cold] = self.fallback(users[cold])
        return scores


class Choice(NamedTuple):
    """What `choose_by_validation` found: `best, params, trials = choose_by_validation(...)`."""

    best: Scorer  # the fitted scorer with the best validation metric
    params: dict[str, Any]  # its grid point
    trials: list[dict[str, Any]]  # per grid point, in grid order: params, metrics, seconds


def choose_by_validation(
    grid: Sequence[Mapping[str, Any]],
    fit: Callable[[dict[str, Any]], Scorer],
    validation: EvaluationSet,
    metric: str = "recall@100",
    ks: Sequence[int] | None = None,
    name: str = "baseline",
) -> Choice:
    """Fits one baseline per grid point and keeps the one with the best validation `metric`.

    Args:
      grid: parameter dicts, e.g. `EASE_GRID`.
      fit: params -> fitted scorer, trained on the training positives, e.g.
        `lambda p: EASE(**p).fit(users, items, n_users, n_items)`.
      validation: a split carved out of the training events (never the test split: the
        choice would then be part of the measurement).
      metric: a key of `models.evaluation.evaluate`'s result, higher is better, e.g.
        "recall@100" or "ndcg@10".
      ks: the cut-offs to evaluate at; by default only the metric's own K.
      name: for the log lines.

    Returns:
      `Choice(best, params, trials)`. Ties go to the earlier grid point. Each trial is
      {"params", "metrics" (all of evaluate's), "fit_seconds", "evaluate_seconds"}. Only the
      best fitted scorer is kept alive (EASE's is n_items² floats).
    """
    if not grid:
        raise ValueError(f"{name}: the parameter grid is empty; pass at least one parameter dict")
    if ks is None:
        _, _, k = metric.partition("@")
        if not k.isdigit():
            raise ValueError(f"metric={metric!r} has no @K; pass ks=... or a metric such as 'recall@100'")
        ks = [int(k)]
    best, best_params, best_value, trials = None, None, -np.inf, []
    for params in grid:
        params = dict(params)
        started = time.perf_counter()
        scorer = fit(params)
        fitted = time.perf_counter()
        metrics = evaluate(scorer, validation, ks)
        evaluated = time.perf_counter()
        if metric not in metrics:
            raise ValueError(
                f"{name}: metric {metric!r} is not among the validation metrics {sorted(metrics)} (K larger than the {validation.n_candidates} candidates?)"
            )
        trials.append(
            {
                "params": params,
                "metrics": metrics,
                "fit_seconds": fitted - started,
                "evaluate_seconds": evaluated - fitted,
            }
        )
        log.info(
            "%s %s: validation %s=%.4f (fit %.1fs, evaluate %.1fs)",
            name,
            params,
            metric,
            metrics[metric],
            fitted - started,
            evaluated - fitted,
        )
        if metrics[metric] > best_value:
            best, best_params, best_value = scorer, params, metrics[metric]
        del scorer
    log.info("%s: chose %s (validation %s=%.4f)", name, best_params, metric, best_value)
    return Choice(best, best_params, trials)


class _Rows:
    """Positive pairs grouped by row (user or item), sorted by row: ALS's sparse side."""

    def __init__(self, keys: np.ndarray, others: np.ndarray, confidence: np.ndarray, n: int):
        self.n, self.others, self.confidence = n, others, confidence
        self.lengths = np.bincount(keys, minlength=n)
        self.starts = np.concatenate([[0], np.cumsum(self.lengths)[:-1]])


def _check_positives(users, items, n_users: int, n_items: int) -> tuple[np.ndarray, np.ndarray]:
    users, items = np.asarray(users, dtype=np.int64), np.asarray(items, dtype=np.int64)
    if users.shape != items.shape or users.ndim != 1:
        raise ValueError(
            f"users {users.shape} and items {items.shape} must be 1-D of the same length: one (user row, candidate position) per positive event"
        )
    if len(users) and (users.min() < 0 or users.max() >= n_users):
        raise ValueError(f"user rows must be in [0, {n_users}); got [{users.min()}, {users.max()}]")
    if len(items) and (items.min() < 0 or items.max() >= n_items):
        raise ValueError(
            f"candidate positions must be in [0, {n_items}); got [{items.min()}, {items.max()}] (events on stories outside the candidates must be dropped first)"
        )
    return users, items


def _binary_matrix(users, items, n_users: int, n_items: int) -> scipy.sparse.csr_matrix:
    """X: [n_users, n_items], 1 where the user has at least one positive event on the item."""
    users, items = _check_positives(users, items, n_users, n_items)
    x = scipy.sparse.csr_matrix((np.ones(len(users), np.float32), (users, items)), shape=(n_users, n_items))
    x.sum_duplicates()
    x.data[:] = 1.0
    return x


def _gram(x: scipy.sparse.csr_matrix, dtype) -> np.ndarray:
    """XᵀX as a dense [n_items, n_items] array, built in row blocks (never a sparse n² copy)."""
    by_item = x.T.tocsr()
    n = x.shape[1]
    gram = np.empty((n, n), dtype=dtype)
    step = max(1, _BLOCK_ENTRIES // max(n, 1))
    for start in range(0, n, step):
        gram[start : start + step] = (by_item[start : start + step] @ x).toarray()
    return gram


def _blocks(work: np.ndarray, budget: int):
    """Consecutive [start, stop) ranges whose summed `work` stays within `budget` (at least
    one row each)."""
    start, n = 0, len(work)
    cumulative = np.concatenate([[0.0], np.cumsum(work)])
    while start < n:
        stop = int(np.searchsorted(cumulative, cumulative[start] + budget, side="right")) - 1
        stop = min(max(stop, start + 1), n)
        yield start, stop
        start = stop
