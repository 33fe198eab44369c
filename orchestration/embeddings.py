"""The embedding DAGs' Beam side: plan a job's options, then check what it published.

The Beam jobs (`beam_jobs/user_embeddings.py`, `beam_jobs/story_embeddings.py`) run in
their own process, started by the Beam provider's `BeamRunPythonPipelineOperator`. The
plan task decides everything a rerun must repeat exactly (the model version, the time
the features are computed as of, the snapshot name) and hands the operator the runner
and pipeline options; the runner and any extra options come from `embed.runner` and
`embed.pipeline_options`, so pointing the same DAG at Dataflow is configuration.
"""

from __future__ import annotations

import importlib.util
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from artifacts import CREATOR_EMBEDDINGS, MODELS, STORY_EMBEDDINGS, USER_EMBEDDINGS, ArtifactStore
from config import EbrConfig
from orchestration.runs import RunIdentity

if TYPE_CHECKING:
    from warehouse import Warehouse

log = logging.getLogger(__name__)

# The Beam job of each DAG and the snapshot kinds it publishes.
JOBS = {
    "users": ("user_embeddings", (USER_EMBEDDINGS,)),
    "stories": ("story_embeddings", (STORY_EMBEDDINGS, CREATOR_EMBEDDINGS)),
}


class NoPublishedModelError(RuntimeError):
    """The embedding jobs need a published model (models/two_tower LATEST)."""


def job_file(entity: str) -> str:
    """Absolute path of the Beam job script for `entity` ("users" or "stories").

    Found through the import system (no import of Beam itself), so it is right for an
    editable checkout and for an installed package alike.
    """
    module, _ = JOBS[entity]
    spec = importlib.util.find_spec("beam_jobs")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("package beam_jobs is not installed (pip install -e . in the repository)")
    return str(Path(next(iter(spec.submodule_search_locations))) / f"{module}.py")


def pipeline_options_dict(options: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """`embed.pipeline_options` ("--key=value" / "--flag" strings) as the operator's dict.

    The Beam provider turns the dict back into flags: a value becomes `--key=value`, True
    becomes `--flag`, and a list repeats the flag, so a repeated option stays repeated.
    """
    parsed: dict[str, Any] = {}
    for item in options:
        if not item.startswith("--") or item == "--":
            raise ValueError(f"embed.pipeline_options entry {item!r} must look like --key=value or --flag")
        key, sep, value = item[2:].partition("=")
        value = value if sep else True
        if key in parsed:
            previous = parsed[key]
            parsed[key] = [*(previous if isinstance(previous, list) else [previous]), value]
        else:
            parsed[key] = value
    return parsed


def dataflow_config(runner: str, options: dict[str, Any]) -> dict[str, Any]:
    """The Beam operator's `dataflow_config` for DataflowRunner ({} for other runners).

    On Dataflow the operator sets `--project` and `--region` from this configuration
    (overriding the pipeline options), and uses it to follow and cancel the job; both
    come from `embed.pipeline_options`, so they must be there.
    """
    if runner.lower() != "dataflowrunner":
        return {}
    missing = [f"--{key}" for key in ("project", "region") if key not in options]
    if missing:
        raise ValueError(f"embed.runner is DataflowRunner but embed.pipeline_options has no {' or '.join(missing)}")
    return {"project_id": options["project"], "location": options["region"], "wait_until_finished": True}


def resolve_as_of(warehouse: Warehouse, logical_date: datetime) -> tuple[datetime, str]:
    """When the features are computed as of, and why.

    The run's logical date, unless the warehouse has no events that late (a backfill of
    old data, a synthetic world, a late partition): then the end of the newest event
    day, the latest time the features can honestly describe. A logical date before the
    first event day is refused.
    """
    from warehouse import WarehouseMissingError

    days = warehouse.event_days()
    if not days:
        raise WarehouseMissingError(f"the warehouse at {warehouse.uri} has no event partitions")
    first = datetime(days[0].year, days[0].month, days[0].day, tzinfo=UTC)
    data_end = datetime(days[-1].year, days[-1].month, days[-1].day, tzinfo=UTC) + timedelta(days=1)
    if logical_date <= first:
        raise ValueError(
            f"logical date {logical_date.isoformat()} is before the first event day {days[0]} of "
            f"{warehouse.uri}: trigger the run with a logical date inside the data"
        )
    if logical_date > data_end:
        return (
            data_end,
            f"the newest event partition ends at {data_end.isoformat()}, before the logical date {logical_date.isoformat()}",
        )
    return logical_date, "the run's logical date"


def plan_embedding_job(cfg: EbrConfig, run: RunIdentity, entity: str) -> dict[str, Any]:
    """Everything the Beam operator needs, decided once per DAG run.

    Returns {"runner", "pipeline_options", "dataflow_config", "model_version", "snapshot",
    "as_of"}. The
    snapshot name is the run's version name, so a rerun writes (or reuses) the same
    snapshot; the model is the one LATEST names when the run plans.
    """
    from warehouse import Warehouse  # pyarrow: not at DAG parse time (job_file is)

    model_version = ArtifactStore.from_config(cfg).kind(MODELS).latest()
    if model_version is None:
        raise NoPublishedModelError(
            f"no published model under {cfg.root}/{MODELS}: run the ebr_train DAG (or `ebr train`) first"
        )
    as_of, why = resolve_as_of(Warehouse.from_config(cfg), run.logical_date)
    snapshot = run.version
    options = {
        **pipeline_options_dict(cfg.embed.pipeline_options),
        "root": cfg.root,
        "model_version": model_version,
        "as_of": as_of.isoformat(),
        "snapshot": snapshot,
        "run_id": run.run_id,
    }
    log.info(
        "%s: model %s, as of %s (%s), snapshot %s, runner %s",
        entity,
        model_version,
        as_of.isoformat(),
        why,
        snapshot,
        cfg.embed.runner,
    )
    return {
        "runner": cfg.embed.runner,
        "pipeline_options": options,
        "dataflow_config": dataflow_config(cfg.embed.runner, options),
        "model_version": model_version,
        "snapshot": snapshot,
        "as_of": as_of.isoformat(),
    }


def check_snapshots(cfg: EbrConfig, entity: str, plan: dict[str, Any]) -> dict[str, Any]:
    """Checks the job's snapshots: complete, from the planned model, not empty.

    Returns {kind: {"snapshot", "count", "latest"}}. Fails with the reason when the job
    exited without writing what the plan asked for.
    """
    store = ArtifactStore.from_config(cfg)
    found = {}
    for kind_name in JOBS[entity][1]:
        kind = store.kind(kind_name)
        manifest = kind.manifest(plan["snapshot"])  # raises UnknownVersionError / IncompleteVersionError
        model = manifest.parents.get("model_version")
        if model != plan["model_version"]:
            raise RuntimeError(
                f"{kind_name}/{plan['snapshot']} was made from model {model!r}, not the planned "
                f"{plan['model_version']!r}: it belongs to another run; clear the whole DAG run"
            )
        count = int(manifest.metrics.get("count", 0))
        if count <= 0:
            raise RuntimeError(
                f"{kind_name}/{plan['snapshot']} is empty: nothing to index (is as-of {plan['as_of']} inside the data?)"
            )
        found[kind_name] = {"snapshot": plan["snapshot"], "count": count, "latest": kind.latest()}
        log.info("%s/%s: %d vectors (LATEST %s)", kind_name, plan["snapshot"], count, found[kind_name]["latest"])
    return found
