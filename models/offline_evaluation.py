"""The trained model and the baselines measured on the same test sets with the same code.

`CandidateSets` says which stories an evaluation ranks (the eligible ones, what serving
serves, and the whole catalogue); `evaluation_sets` builds one `EvaluationSet` per
candidate set over the same test positives and users (with the synthetic world's oracle
when there is one); `measure_all` measures every scorer on every set, with bootstrap
intervals and the model's paired differences against each baseline.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow.compute as pc

from config import EbrConfig, TrainConfig
from models.evaluation import EvaluationSet, Scorer, measure, paired_difference, positions, rows_by_key, summarize
from models.features import SECONDS_PER_DAY, Catalog, EventHistory, positive_scores
from models.splits import Split
from warehouse import Warehouse

# The per-user metrics model and baselines are compared on (paired bootstrap).
COMPARED = ("recall@10", "recall@100", "recall@500", "ndcg@10")


def evaluation_ks(cfg: EbrConfig) -> list[int]:
    """`train.eval_ks` and every depth the promotion gate reads."""
    gate_ks = {int(m.partition("@")[2]) for m in cfg.gate.metrics if m.partition("@")[2].isdigit()}
    return sorted(set(cfg.train.eval_ks) | gate_ks)


@dataclass(frozen=True)
class CandidateSets:
    """The stories an evaluation ranks, as catalogue rows.

    - "eligible": what the story index would hold during the test window, what serving
      serves: created before the window ends, at most `story_max_age_days` old when it
      starts (the story dataflow's rule). The random split has no window: the catalogue.
    - "catalogue": every story created before the window ends.
    `trained` marks the stories with a training event; the others are cold.
    """

    sets: dict[str, np.ndarray]
    trained: np.ndarray  # [n_stories] bool
    created_ts: np.ndarray  # [n_stories]
    as_of: int

    @classmethod
    def at(cls, catalog: Catalog, history: EventHistory, split: Split, story_max_age_days: float) -> CandidateSets:
        end = int(pc.max(split.test["ts"]).as_py()) + 1 if len(split.test) else split.as_of
        created = catalog.story_created_ts
        catalogue = np.flatnonzero(created < end)
        if split.kind == "time":
            eligible = np.flatnonzero((created < end) & (created >= split.as_of - story_max_age_days * SECONDS_PER_DAY))
        else:
            eligible = catalogue
        trained = np.zeros(len(catalog.story_ids), dtype=bool)
        trained[history.story] = True
        return cls({"eligible": eligible, "catalogue": catalogue}, trained, created, split.as_of)

    @property
    def cold(self) -> np.ndarray:
        """[len(catalogue)] bool: catalogue stories without a training event."""
        return ~self.trained[self.sets["catalogue"]]

    def story_as_of(self, stories: np.ndarray) -> np.ndarray:
        """When the index embeds each story: at the cutoff, or just after its creation for
        stories created during the test window (a story index snapshot minutes later)."""
        return np.maximum(self.as_of, self.created_ts[stories] + 1)


def evaluation_sets(
    catalog: Catalog,
    history: EventHistory,
    split: Split,
    candidates: CandidateSets,
    tcfg: TrainConfig,
    warehouse: Warehouse,
) -> dict[str, EvaluationSet]:
    """One EvaluationSet per candidate set, over the same test positives and users."""
    test_user = catalog.user_index(split.test["user_id"].to_pylist())
    test_story = catalog.story_index(split.test["story_id"].to_pylist())
    positive = positive_scores(split.test, history.cfg) >= history.cfg.label_threshold
    n_users = len(catalog.user_ids)
    truth = _ground_truth(warehouse)
    has_history = np.zeros(n_users, dtype=bool)
    has_history[history.user] = True
    sets = {}
    for name, rows in candidates.sets.items():
        position = positions(rows, len(catalog.story_ids))
        keep = positive & (position[test_story] >= 0)
        users = np.unique(test_user[keep])
        if len(users) > tcfg.max_eval_users:
            users = np.sort(
                np.random.default_rng(tcfg.effective_split_seed).choice(users, tcfg.max_eval_users, replace=False)
            )
        test_by_user = rows_by_key(test_user[keep], n_users, position[test_story[keep]])
        seen_pos = position[history.story]
        seen_by_user = rows_by_key(history.user[seen_pos >= 0], n_users, seen_pos[seen_pos >= 0])
        sets[name] = EvaluationSet(
            users=users,
            test_events=[test_by_user[u][0] for u in users.tolist()],
            seen=[np.unique(seen_by_user[u][0]) for u in users.tolist()],
            n_candidates=len(rows),
            match_attributes={
                "language": (catalog.user_language[users], catalog.story_language[rows]),
                "country": (catalog.user_country[users], catalog.story_country[rows]),
            },
            oracle=_oracle(truth, catalog, rows) if truth is not None else None,
            cold=~candidates.trained[rows],
            new_users=~has_history[users],
        )
    return sets


def _ground_truth(warehouse: Warehouse):
    """The synthetic world's oracle, or None for real data."""
    from warehouse.ground_truth import GroundTruth

    try:
        return GroundTruth.load(warehouse)
    except FileNotFoundError:
        return None


def _oracle(truth, catalog: Catalog, candidates: np.ndarray):
    user_row = {u: i for i, u in enumerate(truth.user_ids.tolist())}
    truth_story_row = {s: i for i, s in enumerate(truth.story_ids.tolist())}
    story_row = np.array([truth_story_row[s] for s in catalog.story_ids[candidates]])
    user_rows = np.array([user_row[u] for u in catalog.user_ids])

    def scores(users: np.ndarray) -> np.ndarray:
        u = np.repeat(user_rows[users], len(story_row))
        s = np.tile(story_row, len(users))
        return truth.oracle_scores(u, s).reshape(len(users), len(story_row))

    return scores


def measure_all(
    scorers: dict[str, Scorer], evaluation: dict[str, EvaluationSet], candidates: CandidateSets, ks, tcfg: TrainConfig
):
    """Every scorer on every candidate set; intervals; model-vs-baseline paired differences.

    Scorers score every story row ([U, n_stories]); each candidate set takes its rows as
    columns, in the order its EvaluationSet numbers them.
    """
    metrics: dict[str, dict[str, float]] = {name: {} for name in scorers}
    comparisons: dict[str, dict[str, dict[str, float]]] = {}
    for set_name, data in evaluation.items():
        columns = candidates.sets[set_name]
        prefix = "" if set_name == "eligible" else f"{set_name}_"
        measured = {
            name: measure(lambda u, s=scorer, c=columns: np.asarray(s(u))[:, c], data, ks)
            for name, scorer in scorers.items()
        }
        for name, m in measured.items():
            metrics[name].update({prefix + k: v for k, v in summarize(m, tcfg.bootstrap_samples, tcfg.seed).items()})
        if set_name == "eligible":
            for name, m in measured.items():
                if name != "model":
                    comparisons[name] = {
                        metric: paired_difference(measured["model"], m, metric, tcfg.bootstrap_samples, tcfg.seed)
                        for metric in COMPARED
                        if metric in m.per_user
                    }
    return metrics, comparisons
