"""Which story index and user embeddings versions may be served together: the consistency
rule of DESIGN.md ("Consistency rule for serving") as pure functions over version and model
names. No I/O: the reloader reads the pointers, manifests and HISTORY.jsonl and asks these.

    choose_pair               the newest pair if both sides are of one model; else the served
                              pair (or, with nothing served, the newest consistent pair in
                              HISTORY.jsonl) and why it waits
    newest_consistent_pair    that HISTORY.jsonl pair, from the versions each side's LATEST named
    may_keep_served           a side whose new version fails keeps its served version while
                              that one is of the pair's model
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from serving.state import STORY_INDEX, USER_EMBEDDINGS

REQUIRED_KINDS = (STORY_INDEX, USER_EMBEDDINGS)

# (story index version, user embeddings version) keyed by kind, and their model version.
Pair = tuple[dict[str, str], str]


@dataclass(frozen=True)
class PairChoice:
    """The required versions to serve (`pair`: kind -> version) and their `model`.

    `waiting` is empty when this is the newest pair, else why the newest is not served;
    `pair` is None when there is no consistent pair to serve at all.
    """

    pair: dict[str, str] | None
    model: str | None
    waiting: str = ""


def choose_pair(
    latest: Mapping[str, str],
    models: Mapping[str, str],
    served: Pair | None,
    history: Callable[[], Pair | None],
) -> PairChoice:
    """The pair to serve now.

    latest:  kind -> the version its LATEST names, for both required kinds
    models:  kind -> the model version of that version (from its manifest)
    served:  the pair served now and its model, or None
    history: called only when nothing is served and the newest pair disagrees: the newest
             consistent pair LATEST has named (`newest_consistent_pair`), or None
    """
    newest = {kind: latest[kind] for kind in REQUIRED_KINDS}
    if models[STORY_INDEX] == models[USER_EMBEDDINGS]:
        return PairChoice(newest, models[STORY_INDEX])
    waiting = (
        f"newest story index {latest[STORY_INDEX]} is from model {models[STORY_INDEX]!r} but newest "
        f"user embeddings {latest[USER_EMBEDDINGS]} are from {models[USER_EMBEDDINGS]!r}; "
        "serving the previous pair until both sides match"
    )
    if served is not None:
        # Keep the served pair; its model's optional indexes still follow their LATEST.
        return PairChoice(dict(served[0]), served[1], waiting)
    found = history()
    if found is None:
        return PairChoice(None, None, waiting + " (no consistent pair in HISTORY.jsonl either)")
    pair, model = found
    return PairChoice(
        pair,
        model,
        waiting + f"; started during the rollout: serving the newest consistent pair in HISTORY.jsonl, model {model}",
    )


def newest_consistent_pair(candidates: Mapping[str, Sequence[tuple[str, str, str]]]) -> Pair | None:
    """The newest (story index, user embeddings) pair of one model.

    candidates: kind -> (moved at, version, model) of each version its LATEST named that may
    still be served (complete, not refused), newest move first. For each model, the newest
    version of each side; among the models on both sides, the one whose pair became complete
    last (the later of its two pointer moves), ties by the earlier move. None if no model is
    on both sides.
    """
    newest: dict[str, dict[str, tuple[str, str]]] = {}  # kind -> model -> (moved at, version)
    for kind in REQUIRED_KINDS:
        by_model: dict[str, tuple[str, str]] = {}
        for moved_at, version, model in candidates[kind]:
            by_model.setdefault(model, (moved_at, version))
        newest[kind] = by_model
    both = set(newest[STORY_INDEX]) & set(newest[USER_EMBEDDINGS])
    if not both:
        return None

    def became_consistent(model: str) -> tuple[str, str]:
        # ISO 8601 UTC times order as text: pointer moves keep microseconds (six digits), and
        # a move recorded with whole seconds ("...:05+00:00") sorts before that second's others.
        times = (newest[STORY_INDEX][model][0], newest[USER_EMBEDDINGS][model][0])
        return max(times), min(times)

    model = max(sorted(both), key=became_consistent)  # sorted: an exact tie is decided the same way every time
    return {kind: newest[kind][model][1] for kind in REQUIRED_KINDS}, model


def may_keep_served(served_model: str, model: str) -> bool:
    """Whether a side (or an optional index) whose new version cannot be served keeps its
    served version, of `served_model`, in a set of `model`: only when they are the same, so
    a bad user snapshot does not hold back a good index refresh (or the reverse) and nothing
    of another model joins the set."""
    return served_model == model
