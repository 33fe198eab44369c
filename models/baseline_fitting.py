"""Fitting the baselines of an evaluation, their hyper-parameters chosen on validation.

The baseline models themselves are `models.baselines`; this module carves the validation
split out of the training events, tunes each baseline on it and refits it on every
training positive, scoring the whole catalogue.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from config import EbrConfig
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
    WithColdUserFallback,
    choose_by_validation,
)
from models.evaluation import EvaluationSet, Scorer, positions, rows_by_key
from models.features import SECONDS_PER_DAY, Catalog, EventHistory
from models.splits import Split, choose_test_window


def fit_baselines(
    history: EventHistory, split: Split, catalog: Catalog, cfg: EbrConfig
) -> dict[str, tuple[Scorer, dict[str, Any]]]:
    """Popularity, recent popularity, implicit ALS and EASE (item-kNN past `EASE_MAX_ITEMS`
    engaged stories), fitted on the positive training events over the whole catalogue.

    Hyper-parameters (all but all-time popularity's) are chosen on a validation split
    carved out of the training events as the test split was carved out of the log (the
    last days reaching the same minimum sizes, or a random share), then each baseline is
    refitted on every training event with its chosen parameters. ALS, EASE and item-kNN
    rank users without a training positive by recent popularity (`WithColdUserFallback`);
    recent popularity is tuned first, so they fall back on its chosen window.
    """
    tcfg = cfg.train
    positive = history.positive
    users, stories, ts = history.user[positive], history.story[positive], history.ts[positive]
    n_users, n_stories = len(catalog.user_ids), len(catalog.story_ids)
    universe = _ItemUniverse(np.unique(stories), n_stories)
    window_grid = [{"window_s": d * SECONDS_PER_DAY} for d in RECENT_WINDOW_DAYS]
    item_model = "ease" if len(universe.items) <= EASE_MAX_ITEMS else "item_knn"
    # ALS solves one f x f system per item and iteration: at 128 factors over a catalogue
    # past EASE_MAX_ITEMS a trial takes minutes here, so large catalogues search 32 and 64.
    als_grid = ALS_GRID if item_model == "ease" else tuple(p for p in ALS_GRID if p["factors"] <= 64)
    chosen: dict[str, dict[str, Any]] = {}

    def recent(fit: _Positives, params: dict[str, Any]) -> RecentPopularity:
        return RecentPopularity(universe.local(fit.stories), fit.ts, len(universe.items), fit.as_of, params["window_s"])

    def personalised(model: Any, fit: _Positives) -> Scorer:
        # Users without a training positive get recent popularity (its chosen window).
        warm = np.zeros(n_users, dtype=bool)
        warm[fit.users] = True
        return universe.wrap(
            WithColdUserFallback(
                model.fit(fit.users, universe.local(fit.stories), n_users, len(universe.items)),
                warm,
                recent(fit, chosen["recent_popularity"]["params"]),
            )
        )

    factories: dict[str, tuple[Sequence[dict[str, Any]], Callable[..., Scorer]]] = {
        "recent_popularity": (window_grid, lambda fit, p: universe.wrap(recent(fit, p))),
        "als": (als_grid, lambda fit, p: personalised(ImplicitALS(**p, seed=tcfg.seed), fit)),
        "ease": (EASE_GRID, lambda fit, p: personalised(EASE(**p, max_items=EASE_MAX_ITEMS), fit)),
        "item_knn": (ITEM_KNN_GRID, lambda fit, p: personalised(ItemKNN(**p), fit)),
    }
    factories = {name: f for name, f in factories.items() if name in ("recent_popularity", "als", item_model)}
    everything = _Positives(users, stories, ts, split.as_of)
    chosen.update({name: {"params": dict(grid[0]), "trials": []} for name, (grid, _) in factories.items()})
    if tcfg.tune_baselines:
        fit_part, validation = validation_split(history, split, catalog, cfg)
        for name, (grid, make) in factories.items():
            choice = choose_by_validation(
                grid, lambda p, make=make: make(fit_part, p), validation, metric=BASELINE_METRIC, name=name
            )
            chosen[name] = {
                "params": choice.params,
                "trials": [
                    {**t, "metrics": {k: v for k, v in t["metrics"].items() if k.startswith(("recall@", "ndcg"))}}
                    for t in choice.trials
                ],
            }
            del choice
    out: dict[str, tuple[Scorer, dict[str, Any]]] = {
        "popularity": (
            universe.wrap(Popularity(universe.local(stories), len(universe.items))),
            {"params": {}, "trials": []},
        )
    }
    for name, (_, make) in factories.items():
        out[name] = (make(everything, chosen[name]["params"]), chosen[name])
    return out


BASELINE_METRIC = "recall@100"  # what the baselines' hyper-parameters are chosen on
RECENT_WINDOW_DAYS = (1.0, 3.0, 7.0, 28.0)
# EASE inverts an items x items matrix (n^3): past this many engaged stories item-kNN
# stands in for it (same family of item-item models, sparse).
EASE_MAX_ITEMS = 6000


@dataclass(frozen=True)
class _Positives:
    users: np.ndarray
    stories: np.ndarray  # catalogue rows
    ts: np.ndarray
    as_of: int


class _ItemUniverse:
    """Baselines are fitted over the engaged stories only (EASE is n_items^2) and score the
    catalogue: every other story gets COLD_ITEM_SCORE, as the baselines give cold items."""

    def __init__(self, items: np.ndarray, n_stories: int):
        self.items = items
        self.local_of = positions(items, n_stories)

    def local(self, stories: np.ndarray) -> np.ndarray:
        return self.local_of[stories]

    def wrap(self, scorer: Scorer) -> Scorer:
        def catalogue_scores(users: np.ndarray) -> np.ndarray:
            local = np.asarray(scorer(users), dtype=np.float32)
            out = np.full((len(users), len(self.local_of)), COLD_ITEM_SCORE, dtype=np.float32)
            out[:, self.items] = local
            return out

        return catalogue_scores


def validation_split(
    history: EventHistory, split: Split, catalog: Catalog, cfg: EbrConfig
) -> tuple[_Positives, EvaluationSet]:
    """The training positives split again the way the log was split: (fit part, validation).

    Validation ranks the whole catalogue (the scorers' columns): stories created after the
    training period have no positive in it and every baseline puts them last.
    """
    tcfg = cfg.train
    positive = np.flatnonzero(history.positive)
    if split.kind == "time":
        days = (history.ts[positive] // SECONDS_PER_DAY).astype(np.int64)
        unique_days = np.unique(days)
        by_day = rows_by_key(np.searchsorted(unique_days, days), len(unique_days), history.user[positive])

        def day_counts():
            for i in range(len(unique_days) - 1, -1, -1):
                yield int(unique_days[i]), len(by_day[i][0]), set(by_day[i][0].tolist())

        first_day = choose_test_window(day_counts(), len(unique_days), tcfg)
        cutoff = int(int(first_day) * SECONDS_PER_DAY)
        held = history.ts[positive] >= cutoff
    else:
        held = np.zeros(len(positive), dtype=bool)
        held[
            np.random.default_rng(tcfg.effective_split_seed + 1).choice(
                len(positive), size=max(1, int(len(positive) * tcfg.test_fraction)), replace=False
            )
        ] = True
        cutoff = split.as_of
    fit_rows, val_rows = positive[~held], positive[held]
    n_users = len(catalog.user_ids)
    val_users = np.unique(history.user[val_rows])
    if len(val_users) > tcfg.max_eval_users:
        val_users = np.sort(
            np.random.default_rng(tcfg.effective_split_seed).choice(val_users, tcfg.max_eval_users, replace=False)
        )
    test_by_user = rows_by_key(history.user[val_rows], n_users, history.story[val_rows])
    seen_by_user = rows_by_key(history.user[fit_rows], n_users, history.story[fit_rows])
    data = EvaluationSet(
        users=val_users,
        test_events=[test_by_user[u][0] for u in val_users.tolist()],
        seen=[np.unique(seen_by_user[u][0]) for u in val_users.tolist()],
        n_candidates=len(catalog.story_ids),
    )
    return _Positives(history.user[fit_rows], history.story[fit_rows], history.ts[fit_rows], cutoff), data
