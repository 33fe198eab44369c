"""The task blocks the two embedding DAGs share, declared once.

`embedding_job`: plan -> the Beam job -> check the snapshots it published
(ebr_user_embeddings for `users`, ebr_story_index for `stories` and creators), and
`index_tasks`: build -> validate -> publish one collection's index from the run's
snapshot. Each task is a few lines of glue: it builds the configuration when it runs
(`load_config()`) and calls one function of `orchestration.embeddings` or
`orchestration.indexes` with the run's identity. Parse-time only imports Airflow's SDK
and the Beam provider's operator, like the DAG files.
"""

from __future__ import annotations

import sys
from typing import Any

from airflow.sdk import Asset, task

from orchestration.beam_task_logs import BeamJobOperator
from orchestration.embeddings import job_file


@task(multiple_outputs=True)
def plan(entity: str, **context) -> dict:
    from config import load_config
    from orchestration.embeddings import plan_embedding_job
    from orchestration.runs import RunIdentity

    return plan_embedding_job(load_config(), RunIdentity.from_context(context), entity)


@task
def check_snapshots(entity: str, snapshot: str, model_version: str, as_of: str) -> dict:
    from config import load_config
    from orchestration.embeddings import check_snapshots

    return check_snapshots(
        load_config(), entity, {"snapshot": snapshot, "model_version": model_version, "as_of": as_of}
    )


def embedding_job(entity: str, *, embed_task_id: str, check_task_id: str, check_outlets: list[Asset]) -> tuple:
    """plan -> `embed_task_id` (the Beam job of `entity`) -> `check_task_id`.

    The plan's XComs give the operator its runner and pipeline options and the check
    its snapshot, model version and as-of time. Returns (the plan's output, the check).
    """
    planned = plan(entity)
    embed = BeamJobOperator(
        task_id=embed_task_id,
        py_file=job_file(entity),
        py_interpreter=sys.executable,
        runner=planned["runner"],
        pipeline_options=planned["pipeline_options"],
        dataflow_config=planned["dataflow_config"],
    )
    checked = check_snapshots.override(task_id=check_task_id, outlets=check_outlets)(
        entity, planned["snapshot"], planned["model_version"], planned["as_of"]
    )
    embed >> checked
    return planned, checked


@task
def build_index(collection: str, snapshot: str, **context) -> dict:
    from config import load_config
    from orchestration.indexes import build_index
    from orchestration.runs import RunIdentity

    return build_index(load_config(), RunIdentity.from_context(context), collection, snapshot)


@task
def validate_index(built: dict) -> dict:
    from config import load_config
    from orchestration.indexes import validate_index

    return validate_index(load_config(), built)


@task
def publish_index(validated: dict, **context) -> dict:
    from config import load_config
    from orchestration.indexes import publish_index
    from orchestration.runs import RunIdentity

    return publish_index(load_config(), RunIdentity.from_context(context), validated)


def index_tasks(
    collection: str, snapshot: Any, after: Any, *, outlets: list[Asset], task_ids: tuple[str, str, str]
) -> Any:
    """build -> validate -> publish of `collection` from `snapshot`, after `after` (the check).

    `task_ids` names the three (build, validate, publish); publish emits `outlets`.
    Returns the publish task.
    """
    build_id, validate_id, publish_id = task_ids
    built = build_index.override(task_id=build_id)(collection, snapshot)
    after >> built
    validated = validate_index.override(task_id=validate_id)(built)
    return publish_index.override(task_id=publish_id, outlets=outlets)(validated)
