"""The daily training DAG's tasks: check inputs -> train and evaluate -> gate -> publish.

Training builds its examples batch by batch while it fits (`models.training`: features
as of each event, never all in memory), so there is no separate example table to hand
from one task to the next; the first task checks that the warehouse the examples come
from is there and says what it holds. The training task exports the model and uploads
it into an uncommitted write attempt of its version (`models.publish.stage_model`); the
gate decides on the metrics it returns; the publish task commits that attempt and moves
LATEST. Tasks hand each other only XCom messages and the store's objects, never a local
folder, so each may run on a different worker. A refused model stays an uncommitted
attempt, invisible to readers, which retention removes after the grace period. A rerun
of the same DAG run finds its version complete in the store and only retries the
publish step (`models.pipeline.train_and_publish` does the same).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from artifacts import MODELS, ArtifactStore
from config import EbrConfig
from orchestration.runs import RunIdentity, run_workdir
from warehouse import Warehouse, WarehouseMissingError

log = logging.getLogger(__name__)


def check_warehouse(cfg: EbrConfig) -> dict[str, Any]:
    """Row counts and event days of the warehouse training reads; fails if it has no events."""
    warehouse = Warehouse.from_config(cfg)
    if not warehouse.exists():
        raise WarehouseMissingError(
            f"no warehouse at {warehouse.uri}: write one first (ebr data generate, or "
            "ebr data convert movielens|kuairand) with the same root (EBR_ROOT / --root)"
        )
    summary = warehouse.summary()
    if not summary["days"] or not summary["rows"]["events"]:
        raise WarehouseMissingError(f"the warehouse at {warehouse.uri} has no event partitions to train on")
    log.info(
        "warehouse %s: %s, events %s .. %s", summary["uri"], summary["rows"], summary["first_day"], summary["last_day"]
    )
    return {key: summary[key] for key in ("uri", "rows", "first_day", "last_day", "days")}


def train_model(cfg: EbrConfig, run: RunIdentity, *, verbose: int = 2) -> dict[str, Any]:
    """Trains and evaluates the model version of this run, exports it and stages it in the
    store (uncommitted, not published).

    Returns {"version", "reused", "staged", "metrics"}: metrics are the model's test
    metrics (and the baselines'), `staged` what the publish task commits
    (`models.publish.stage_model`); `reused` is True (and `staged` None) when the version is
    complete in the store already, i.e. this is a rerun of a run that got as far as
    publishing.
    """
    from models.pipeline import model_params, train_and_export
    from models.publish import stage_model

    version = run.version
    kind = ArtifactStore.from_config(cfg).kind(MODELS)
    if kind.is_complete(version):
        log.info("%s/%s is complete already: reusing it", MODELS, version)
        return {
            "version": version,
            "reused": True,
            "staged": None,
            "metrics": {"model": kind.manifest(version).metrics},
        }

    workdir = run_workdir(cfg, run)
    if cfg.train.workers > 1:
        metrics, best_epoch, examples_per_second, export_dir = _train_on_workers(cfg, run, workdir)
    else:  # the gate is the next task's: not decided here
        result, export_dir = train_and_export(cfg, workdir, Warehouse.from_config(cfg), verbose=verbose)
        metrics, best_epoch, examples_per_second = result.metrics, result.best_epoch, result.examples_per_second
    params = model_params(cfg, best_epoch, examples_per_second, cfg.train.workers)
    params["dag_run"] = {"dag_id": run.dag_id, "run_id": run.run_id, "logical_date": run.logical_date.isoformat()}
    parents = {"warehouse": Warehouse.from_config(cfg).uri, "previous_model": kind.latest() or ""}
    staged = stage_model(
        ArtifactStore.from_config(cfg), Path(export_dir), version, parents=parents, params=params, metrics=metrics
    )
    log.info(
        "trained %s: %s; staged as attempt %s",
        version,
        {k: round(v, 4) for k, v in metrics["model"].items() if "@" in k},
        staged["attempt"],
    )
    return {"version": version, "reused": False, "staged": staged, "metrics": metrics}


def _train_on_workers(cfg: EbrConfig, run: RunIdentity, workdir: Path) -> tuple[dict, int, float, Path]:
    """`ebr train --workers N --no-publish` for this run's version (models.distributed):
    the chief's metrics and export, which the gate and publish tasks then read as usual."""
    from models.distributed import run_workers, train_command

    command = train_command(cfg, run.version, workdir, cfg.train.workers, run_id=run.run_id, publish=False)
    log.info("training %s with %d worker processes (workers 1.. log to %s)", run.version, cfg.train.workers, workdir)
    code = run_workers(command, cfg.train.workers, workdir)
    if code:
        raise RuntimeError(
            f"distributed training of {run.version} failed: a worker exited with {code} (logs in {workdir})"
        )
    chief = json.loads((workdir / "metrics.json").read_text())
    return chief["metrics"], chief["best_epoch"], chief["examples_per_second"], workdir / "export"


def gate_model(cfg: EbrConfig, trained: dict[str, Any]) -> dict[str, Any]:
    """The promotion gate against the model LATEST names now: {"promote", "reasons"}."""
    if trained["reused"]:
        return {
            "promote": True,
            "reasons": [f"{trained['version']} was gated and stored by an earlier try of this run"],
        }
    from models.gate import promotion_gate
    from models.publish import published_metrics

    decision = promotion_gate(trained["metrics"], published_metrics(ArtifactStore.from_config(cfg)), cfg)
    log.info("gate: %s: %s", "promote" if decision.promote else "refuse", "; ".join(decision.reasons))
    return {"promote": decision.promote, "reasons": decision.reasons}


def publish_trained_model(
    cfg: EbrConfig, run: RunIdentity, trained: dict[str, Any], gate: dict[str, Any]
) -> dict[str, Any]:
    """Commits the model the training task staged (unless complete already) and moves
    LATEST to it.

    Returns {"version", "moved", "latest", "detail", "announce"}; `announce` says whether
    LATEST names this version now (moved by this call or by an earlier try of the run),
    i.e. whether downstream DAGs should hear of a new model.
    """
    from artifacts import VersionExistsError
    from models.publish import commit_staged_model

    store = ArtifactStore.from_config(cfg)
    kind = store.kind(MODELS)
    version = trained["version"]
    reason = f"promotion gate passed: {'; '.join(gate['reasons'])}"
    if not kind.is_complete(version):
        try:
            commit_staged_model(store, trained["staged"])
        except VersionExistsError:  # another try of this run committed it meanwhile: publish that
            log.info("%s/%s was committed by another attempt: publishing it", MODELS, version)
    published = kind.publish(version, reason=reason, run_id=run.run_id)
    log.info("%s: %s", MODELS, published.detail)
    return {
        "version": version,
        "moved": published.moved,
        "latest": published.latest,
        "detail": published.detail,
        "announce": published.latest == version,
    }
