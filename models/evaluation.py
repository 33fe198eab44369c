"""Retrieval metrics, computed the same way for the model and for the baselines.

A *scorer* maps a batch of evaluation users to scores over the candidate stories
([batch, n_candidates]); everything else (which users, which stories are relevant, which
were already seen) is fixed by the split, so every scorer is measured on the same ground.

Metrics:
- `top_k_accuracy@K`: per test event, is its story in the user's top K (seen stories
  *not* excluded): TFRS's `factorized_top_k/top_K_categorical_accuracy`.
- `recall@K`: per user, the share of their test stories in the top K after removing the
  stories they engaged with in training; averaged over users.
- `ndcg@10`: binary relevance, seen stories removed, averaged over users.
- `coverage@K`: share of candidates that appear in at least one user's top K.
- `language_match@K`, `country_match@K` (when given): share of top-K stories in the user's
  language / country.
- `oracle_recall@K` (synthetic worlds): overlap of the top K with the oracle's top K.
- `cold_recall@K` (when `cold` marks candidates): recall over the relevant stories that
  had no training event (first seen after the cutoff), averaged over users with one.

Next to the figures, the size of what they were measured on: `eval_users` (users with a
relevant story), `eval_positives` (relevant user-story pairs), `eval_events`, and for
cold-start `cold_eval_users`/`cold_eval_positives`. `measure` keeps every user's value of
the per-user metrics, so `summarize` can add bootstrap confidence intervals
(`<metric>_lo`/`<metric>_hi`, resampling users) and `paired_difference` can say whether one
scorer beats another by more than chance on the same users.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

Scorer = Callable[[np.ndarray], np.ndarray]


@dataclass
class EvaluationSet:
    users: np.ndarray  # [U] user rows (catalog indices)
    test_events: list[np.ndarray]  # per user: candidate positions of test events (repeats kept)
    seen: list[np.ndarray]  # per user: candidate positions engaged with in training
    n_candidates: int
    # Attributes to match, e.g. {"language": ([U] user values, [C] candidate values)}.
    match_attributes: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    oracle: Scorer | None = None
    cold: np.ndarray | None = None  # [C] bool: candidates with no training event
    # [U] bool: users without a training event (new since the cutoff). With it, the
    # figures are also given for them (new_user_*) and for the others (returning_user_*):
    # on a time split most test users can be new, and nothing but popularity and their
    # profile can serve them.
    new_users: np.ndarray | None = None


# Per-user metrics, the ones intervals and paired differences are computed for.
PER_USER_PREFIXES = ("recall@", "ndcg@", "cold_recall@")


@dataclass
class Measurement:
    """A scorer's figures on one EvaluationSet, with every evaluated user's own values.

    `per_user[metric]` is aligned across scorers measured on the same EvaluationSet (the
    users with a relevant story, in `data.users` order; for cold_recall, those with a
    relevant cold story), which is what makes paired comparisons possible.
    """

    metrics: dict[str, float]
    per_user: dict[str, np.ndarray]


def evaluate(
    scorer: Scorer, data: EvaluationSet, ks: Sequence[int], batch_size: int = 256, *, bootstrap: int = 0, seed: int = 0
) -> dict[str, float]:
    """The metrics of `scorer` (with `<metric>_lo`/`_hi` 95% intervals when `bootstrap`)."""
    return summarize(measure(scorer, data, ks, batch_size), bootstrap, seed)


def summarize(measurement: Measurement, bootstrap: int = 0, seed: int = 0) -> dict[str, float]:
    metrics = dict(measurement.metrics)
    if bootstrap:
        for name, values in measurement.per_user.items():
            metrics[f"{name}_lo"], metrics[f"{name}_hi"] = bootstrap_interval(values, bootstrap, seed)
    return metrics


def bootstrap_interval(values: np.ndarray, samples: int, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of the mean of `values` over `samples` resamples (with replacement)."""
    if len(values) == 0:
        return 0.0, 0.0
    means = _resampled_means(np.asarray(values, np.float64), samples, seed)
    tail = (1.0 - level) / 2 * 100
    return float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail))


def paired_difference(
    a: Measurement, b: Measurement, metric: str, samples: int = 1000, seed: int = 0
) -> dict[str, float]:
    """mean(a - b) of `metric` over the same users, with a 95% paired-bootstrap interval.

    `significant` is 1.0 when the interval excludes zero: a win (or loss) larger than the
    spread that resampling the evaluated users gives.
    """
    x, y = a.per_user[metric], b.per_user[metric]
    if len(x) != len(y):
        raise ValueError(f"{metric}: the two measurements are not on the same users ({len(x)} vs {len(y)})")
    diff = x - y
    lo, hi = bootstrap_interval(diff, samples, seed)
    return {
        "difference": float(diff.mean()) if len(diff) else 0.0,
        "lo": lo,
        "hi": hi,
        "significant": float(lo > 0 or hi < 0),
    }


def _resampled_means(values: np.ndarray, samples: int, seed: int, chunk: int = 100) -> np.ndarray:
    rng = np.random.default_rng(seed)
    means = [
        values[rng.integers(0, len(values), (min(chunk, samples - i), len(values)))].mean(axis=1)
        for i in range(0, samples, chunk)
    ]
    return np.concatenate(means)


def measure(scorer: Scorer, data: EvaluationSet, ks: Sequence[int], batch_size: int = 256) -> Measurement:
    ks = sorted(k for k in ks if k <= data.n_candidates)
    k_max = min(max([*ks, 10]), data.n_candidates)  # NDCG@10 needs ten, whatever ks are
    hits_any = {k: 0 for k in ks}
    n_test_events = 0
    recall = {k: [] for k in ks}
    ndcg = []
    covered = {k: np.zeros(data.n_candidates, dtype=bool) for k in ks}
    matches = {(name, k): [] for name in data.match_attributes for k in ks}
    oracle_recall = {k: [] for k in ks}
    cold_recall = {k: [] for k in ks}
    n_relevant = n_cold = 0
    is_new: list[bool] = []  # per user with a relevant story, aligned with per_user
    discounts = 1.0 / np.log2(np.arange(2, 12))

    for start in range(0, len(data.users), batch_size):
        rows = slice(start, start + batch_size)
        scores = np.asarray(scorer(data.users[rows]), dtype=np.float32)
        top_all = _top_k(scores, k_max)
        seen = data.seen[rows]
        # Nothing seen in the batch (as in training's validation): the same ranking twice.
        top_unseen = _top_k(_masked(scores, seen), k_max) if any(len(s) for s in seen) else top_all
        oracle_top = _top_k(_masked(data.oracle(data.users[rows]), data.seen[rows]), k_max) if data.oracle else None

        for i, test in enumerate(data.test_events[rows]):
            u = start + i
            if len(test) == 0:
                continue
            # Each test event's rank in the top k_max (k_max where it is not in it).
            found = top_all[i][None, :] == np.asarray(test)[:, None]
            test_ranks = np.where(found.any(axis=1), found.argmax(axis=1), k_max)
            relevant = np.setdiff1d(np.unique(test), data.seen[u])
            cold = relevant[data.cold[relevant]] if data.cold is not None else relevant[:0]
            n_test_events += len(test)
            n_relevant += len(relevant)
            n_cold += len(cold)
            for k in ks:
                hits_any[k] += int((test_ranks < k).sum())
                covered[k][top_unseen[i, :k]] = True
                if len(relevant):
                    recall[k].append(np.isin(top_unseen[i, :k], relevant).sum() / len(relevant))
                if len(cold):
                    cold_recall[k].append(np.isin(top_unseen[i, :k], cold).sum() / len(cold))
                for name, (user_values, candidate_values) in data.match_attributes.items():
                    matches[name, k].append(np.mean(candidate_values[top_unseen[i, :k]] == user_values[u]))
                if oracle_top is not None:
                    oracle_recall[k].append(np.isin(top_unseen[i, :k], oracle_top[i, :k]).mean())
            if len(relevant):
                is_new.append(bool(data.new_users[u]) if data.new_users is not None else False)
                gains = np.isin(top_unseen[i, :10], relevant)
                ideal = discounts[: min(len(relevant), 10)].sum()
                ndcg.append((gains * discounts[: len(gains)]).sum() / ideal)

    metrics: dict[str, float] = {
        "eval_users": float(len(ndcg)),
        "eval_positives": float(n_relevant),
        "eval_events": float(n_test_events),
    }
    per_user = {"ndcg@10": np.array(ndcg, np.float64)}
    if data.cold is not None:
        metrics["cold_eval_users"] = float(len(cold_recall[ks[0]]) if ks else 0)
        metrics["cold_eval_positives"] = float(n_cold)
    for k in ks:
        per_user[f"recall@{k}"] = np.array(recall[k], np.float64)
        metrics[f"top_k_accuracy@{k}"] = hits_any[k] / max(n_test_events, 1)
        metrics[f"recall@{k}"] = float(np.mean(recall[k])) if recall[k] else 0.0
        metrics[f"coverage@{k}"] = float(covered[k].mean())
        for name in data.match_attributes:
            if matches[name, k]:
                metrics[f"{name}_match@{k}"] = float(np.mean(matches[name, k]))
        if oracle_recall[k]:
            metrics[f"oracle_recall@{k}"] = float(np.mean(oracle_recall[k]))
        if data.cold is not None:
            metrics[f"cold_recall@{k}"] = float(np.mean(cold_recall[k])) if cold_recall[k] else 0.0
            per_user[f"cold_recall@{k}"] = np.array(cold_recall[k], np.float64)
    metrics["ndcg@10"] = float(np.mean(ndcg)) if ndcg else 0.0
    if data.new_users is not None:
        new = np.array(is_new, dtype=bool)
        for segment, mask in (("new_user", new), ("returning_user", ~new)):
            metrics[f"{segment}_eval_users"] = float(mask.sum())
            for name in ["ndcg@10", *(f"recall@{k}" for k in ks)]:
                metrics[f"{segment}_{name}"] = float(per_user[name][mask].mean()) if mask.any() else 0.0
    return Measurement(metrics, per_user)


def rows_by_key(keys: np.ndarray, n: int, *columns: np.ndarray) -> list[tuple[np.ndarray, ...]]:
    """For each key 0..n-1, the entries of `columns` whose key it is (in input order)."""
    order = np.argsort(keys, kind="stable")
    bounds = np.searchsorted(keys[order], np.arange(n + 1))
    sorted_columns = [c[order] for c in columns]
    return [tuple(c[bounds[i] : bounds[i + 1]] for c in sorted_columns) for i in range(n)]


def positions(rows: np.ndarray, n: int) -> np.ndarray:
    """[n]: for each of n catalogue rows its position in `rows`, -1 where it is not there.

    How candidate sets and user sets number their members (an EvaluationSet's candidate
    positions, a scorer's user rows)."""
    position = np.full(n, -1)
    position[rows] = np.arange(len(rows))
    return position


def _masked(scores: np.ndarray, seen: Sequence[np.ndarray]) -> np.ndarray:
    scores = np.array(scores, dtype=np.float32, copy=True)
    for i, s in enumerate(seen):
        scores[i, s] = -np.inf
    return scores


def _top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k highest scores per row, best first: [rows, k]."""
    k = min(k, scores.shape[1])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)
