"""The promotion gate: may a trained model version replace the published one?"""

from __future__ import annotations

from dataclasses import dataclass

from config import EbrConfig


@dataclass(frozen=True)
class GateDecision:
    promote: bool
    reasons: list[str]


def promotion_gate(
    metrics: dict[str, dict[str, float]], previous: dict[str, dict[str, float]] | None, cfg: EbrConfig
) -> GateDecision:
    """Refuses a model that is worse than popularity at any depth, clearly worse than the
    published one, or measured on a test set too small to tell.

    Every metric in `gate.metrics` (recall at several depths and NDCG@10: a model whose top
    10 collapsed can still look fine at 100) is checked against the better of all-time and
    recent popularity, and against `previous`, the metrics.json of the model LATEST names
    (measured on its own evaluation split, so the tolerance `gate.max_regression` is
    deliberately loose). Each failed check is one reason.
    """
    gate, model = cfg.gate, metrics["model"]
    users, positives = int(model.get("eval_users", 0)), int(model.get("eval_positives", 0))
    if users < gate.min_eval_users or positives < gate.min_eval_positives:
        return GateDecision(
            False,
            [
                f"the test set is too small to decide: {users} users and {positives} positives "
                f"(gate.min_eval_users={gate.min_eval_users}, gate.min_eval_positives={gate.min_eval_positives}); "
                "hold out more with train.min_test_users / train.min_test_positives"
            ],
        )
    reasons = []
    for metric in gate.metrics:
        if metric not in model:
            reasons.append(f"{metric} was not measured (is its depth in train.eval_ks and within the candidates?)")
            continue
        value = model[metric]
        name, best = max(
            ((n, metrics[n][metric]) for n in POPULARITY_BASELINES if metric in metrics.get(n, {})),
            key=lambda nv: nv[1],
            default=(None, None),
        )
        if best is not None and value < best * (1.0 + gate.min_lift_over_popularity):
            reasons.append(
                f"{metric} {value:.4f} is below {name}'s {best:.4f} (floor {best * (1.0 + gate.min_lift_over_popularity):.4f})"
            )
        before = (previous or {}).get("model", {}).get(metric)
        if before is not None and value < before * (1.0 - gate.max_regression):
            reasons.append(
                f"{metric} {value:.4f} is more than {gate.max_regression:.0%} below the published model's {before:.4f}"
            )
    if reasons:
        return GateDecision(False, reasons)
    shown = ", ".join(f"{m} {model[m]:.4f}" for m in gate.metrics)
    return GateDecision(True, [f"{shown} pass on {users} users and {positives} positives"])


# The baselines the gate's "better than popularity" checks read, when measured.
POPULARITY_BASELINES = ("popularity", "recent_popularity")
