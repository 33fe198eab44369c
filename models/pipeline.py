"""Train -> export -> gate -> publish: what `ebr train` and the daily DAG run."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from artifacts import MODELS, ArtifactStore, PublishResult
from config import EbrConfig
from models.distributed import is_chief, wait_for_every_worker
from models.export import export_towers
from models.gate import GateDecision, promotion_gate
from models.publish import publish_model, published_metrics
from models.training import TrainingResult, train_and_evaluate
from warehouse import Warehouse

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainOutcome:
    version: str
    result: TrainingResult | None
    gate: GateDecision | None
    published: PublishResult | None
    export_dir: Path | None
    reused: bool = False


def train_and_publish(
    cfg: EbrConfig,
    workdir: Path,
    version: str,
    *,
    run_id: str | None = None,
    publish: bool = True,
    verbose: int = 1,
    strategy: Any = None,
) -> TrainOutcome:
    """Trains a model version and publishes it if the promotion gate lets it through.

    Idempotent per version name: if `version` is complete in the store already (a rerun
    of the same DAG run), nothing is trained again and only the publish step is retried.

    With a distributed `strategy` (`models.distributed`) every worker trains; only the
    chief evaluates the baselines, exports, gates and publishes (the others return an
    outcome without a gate decision, their logs under `workdir/worker-<i>`).
    """
    store = ArtifactStore.from_config(cfg)
    kind = store.kind(MODELS)
    if kind.is_complete(version):
        log.info("%s/%s exists: reusing it", MODELS, version)
        published = kind.publish(version, reason="rerun: version already trained", run_id=run_id) if publish else None
        return TrainOutcome(version, None, None, published, None, reused=True)

    warehouse = Warehouse.from_config(cfg)
    if not is_chief(strategy):
        workdir = Path(workdir) / f"worker-{strategy.cluster_resolver.task_id}"
        result = train_and_evaluate(cfg, workdir, warehouse, baselines=False, verbose=0, strategy=strategy)
        wait_for_every_worker(strategy)
        return TrainOutcome(version, result, None, None, None)
    try:
        return _train_gate_publish(
            cfg,
            Path(workdir),
            version,
            store,
            warehouse,
            run_id=run_id,
            publish=publish,
            verbose=verbose,
            strategy=strategy,
        )
    finally:
        wait_for_every_worker(strategy)


def _train_gate_publish(
    cfg: EbrConfig,
    workdir: Path,
    version: str,
    store: ArtifactStore,
    warehouse: Warehouse,
    *,
    run_id,
    publish,
    verbose,
    strategy,
) -> TrainOutcome:
    kind = store.kind(MODELS)
    result, export_dir = train_and_export(cfg, workdir, warehouse, verbose=verbose, strategy=strategy)
    decision = promotion_gate(result.metrics, published_metrics(store), cfg)
    published = None
    if publish and decision.promote:
        published = publish_model(
            store,
            export_dir,
            version,
            parents={"warehouse": warehouse.uri, "previous_model": kind.latest() or ""},
            params=model_params(
                cfg,
                result.best_epoch,
                result.examples_per_second,
                strategy.num_replicas_in_sync if strategy is not None else 1,
            ),
            metrics=result.metrics,
            reason="promotion gate passed: " + "; ".join(decision.reasons),
            run_id=run_id,
        )
    return TrainOutcome(version, result, decision, published, export_dir)


def train_and_export(
    cfg: EbrConfig, workdir: Path, warehouse: Warehouse, *, verbose: int = 1, strategy: Any = None
) -> tuple[TrainingResult, Path]:
    """Trains and evaluates (`models.training`), then exports both towers to workdir/export."""
    result = train_and_evaluate(cfg, workdir, warehouse, verbose=verbose, strategy=strategy)
    content_dim = int(result.model.story_tower.content_dim)
    return result, export_towers(
        result.model, result.vocabularies, cfg, content_dim, result.metrics, workdir / "export"
    )


def model_params(cfg: EbrConfig, best_epoch: int, examples_per_second: float, workers: int = 1) -> dict[str, Any]:
    """The `params` of a model version's manifest: the settings it was trained with and how."""
    return {
        "workers": workers,
        "features": cfg.features.model_dump(mode="json"),
        "model": cfg.model.model_dump(mode="json"),
        "train": cfg.train.model_dump(mode="json"),
        "best_epoch": best_epoch,
        "examples_per_second": round(examples_per_second, 1),
    }
