"""The parse-time side of the DAGs: their settings, run policy, schedules, assets, trigger-form Params.

DAG files are parsed every few seconds by the DAG processor, so this module imports
only Airflow's SDK (no TensorFlow, Beam, numpy or store I/O), and parsing reads no
environment variable of the pipeline and no configuration file: `load_config()` (the
pipeline's `EBR_ROOT` / `EBR_CONFIG` / `EBR_*`) is called by the tasks when they run,
never while a DAG file is parsed. What the DAGs' shape needs is an Airflow setting,
section `[ebr]` of `airflow.cfg` (or `AIRFLOW__EBR__<KEY>`, Airflow's own way to set
any of its settings), read through Airflow's configuration (`DagSettings`):

    [ebr]
    root = file:///abs/path                    # the root the assets and the rollback form name
    start_date = 2026-01-01                    # the first date the schedules may run for
    train_schedule = @daily                    # ebr_train
    user_embeddings_schedule = 0 */4 * * *     # ebr_user_embeddings (and on every new model)
    story_index_schedule = */30 * * * *        # ebr_story_index (and on every new model)
    retention_schedule = @daily                # ebr_retention
    build_user_index = True                    # ebr_user_embeddings also publishes the users index

`root` must name the root the tasks use (their `EBR_ROOT`): the launchers here
(`orchestration.local_airflow`, `orchestration.demo`) set `AIRFLOW__EBR__ROOT` to the
root of the pipeline configuration they start Airflow with (`dag_settings_environment`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any

from airflow.sdk import Asset, AssetOrTimeSchedule, CronTriggerTimetable, Param, dag

from artifacts import MODELS, USER_EMBEDDINGS, index_kind
from config.settings import REPO_DIR
from orchestration.indexes import COLLECTIONS

# artifacts.names: letters, digits, ".", "_", "+", "-"; starts alphanumeric; no "..";
# at most 128 characters. JSON Schema (the trigger form and the REST API) checks it.
VERSION_PATTERN = r"^(?!.*\.\.)[0-9A-Za-z][0-9A-Za-z._+-]{0,127}$"

TAGS = ["ebr"]

SECTION = "ebr"  # of Airflow's configuration


@dataclasses.dataclass(frozen=True)
class DagSettings:
    """The `[ebr]` Airflow settings the DAG files are declared with (defaults here).

    Schedules are cron expressions (or presets such as "@daily"), evaluated in UTC by a
    `CronTriggerTimetable`.
    """

    # The pipeline's default root (config/defaults.toml: "file://{repo}/var/ebr"; a test keeps them equal).
    root: str = f"file://{REPO_DIR}/var/ebr"
    # The first date the schedules may run for (catch-up is off: only the newest
    # interval runs when a DAG is switched on).
    start_date: date = date(2026, 1, 1)
    train_schedule: str = "@daily"
    user_embeddings_schedule: str = "0 */4 * * *"
    story_index_schedule: str = "*/30 * * * *"
    retention_schedule: str = "@daily"
    # Whether ebr_user_embeddings also builds and publishes the `users` index (for
    # similar-user queries); the story and creator indexes are ebr_story_index's.
    build_user_index: bool = True


def dag_settings() -> DagSettings:
    """The `[ebr]` section of Airflow's configuration over `DagSettings`' defaults.

    Airflow's configuration is in memory once Airflow is imported (an `AIRFLOW__EBR__*`
    variable is looked up in the process's environment, as for every Airflow setting),
    so this is cheap enough for every parse.

    Raises:
      ValueError: a value is malformed; the message names the setting.
    """
    from airflow.sdk.configuration import conf

    defaults = DagSettings()
    values: dict[str, Any] = {}
    for field in dataclasses.fields(DagSettings):
        if not conf.has_option(SECTION, field.name):
            continue
        raw = conf.get(SECTION, field.name).strip()
        try:
            if isinstance(getattr(defaults, field.name), bool):
                values[field.name] = _boolean(raw)
            elif isinstance(getattr(defaults, field.name), date):
                values[field.name] = date.fromisoformat(raw)
            else:
                values[field.name] = raw
        except ValueError as err:
            raise ValueError(
                f"Airflow setting [{SECTION}] {field.name} = {raw!r} is invalid ({err}); "
                f"the default is {getattr(defaults, field.name)!r}"
            ) from None
    return dataclasses.replace(defaults, **values)


def _boolean(raw: str) -> bool:
    """Airflow's own spelling of booleans (`conf.getboolean`): t/true/1, f/false/0."""
    if raw.lower() in ("t", "true", "1"):
        return True
    if raw.lower() in ("f", "false", "0"):
        return False
    raise ValueError("not a boolean: true or false")


def start_date() -> datetime:
    day = dag_settings().start_date
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def default_args(retries: int = 1) -> dict[str, Any]:
    return {"owner": "ebr", "retries": retries, "retry_delay": timedelta(minutes=5)}


def ebr_dag(dag_id: str, schedule: Any, doc: str, *, retries: int = 1, **more: Any) -> Callable:
    """`@dag` with the run policy every EBR DAG shares.

    From `[ebr] start_date`, no catch-up (a DAG switched on runs only its newest
    interval), one active run at a time, `retries` retries five minutes apart, tagged
    "ebr", the file's docstring as its documentation; `more` goes to `@dag` as it is.
    """
    return dag(
        dag_id=dag_id,
        schedule=schedule,
        start_date=start_date(),
        catchup=False,
        max_active_runs=1,
        default_args=default_args(retries),
        tags=TAGS,
        doc_md=doc,
        **more,
    )


def cron(expression: str) -> CronTriggerTimetable:
    return CronTriggerTimetable(expression, timezone="UTC")


def kind_asset(kind: str) -> Asset:
    """The asset of an artifact kind: its folder under the root; an event = a new LATEST."""
    return Asset(name=f"ebr/{kind}", uri=f"{dag_settings().root}/{kind}", group="ebr")


def model_asset() -> Asset:
    return kind_asset(MODELS)


def cron_or_new_model(expression: str) -> AssetOrTimeSchedule:
    """Runs on the cron schedule and whenever ebr_train publishes a model."""
    return AssetOrTimeSchedule(timetable=cron(expression), assets=model_asset())


def user_embeddings_asset() -> Asset:
    return kind_asset(USER_EMBEDDINGS)


def index_asset(collection: str) -> Asset:
    return kind_asset(index_kind(collection))


def rollback_params() -> dict[str, Param]:
    """The trigger form of ebr_rollback, validated by JSON Schema before a run is created."""
    return {
        "collection": Param(
            "stories",
            type="string",
            enum=list(COLLECTIONS),
            title="Collection",
            description="The index whose LATEST pointer moves.",
        ),
        "version": Param(
            type="string",
            pattern=VERSION_PATTERN,
            minLength=1,
            maxLength=128,
            title="Version",
            description="An earlier complete version of indexes/<collection>, e.g. "
            "20261015T000000Z-ebr_story_index-scheduled__2026-10-15T00-00-00-00-00 "
            "(`ebr artifacts list` shows them). The first task checks it exists and is intact.",
        ),
        "reason": Param(
            type="string",
            minLength=3,
            maxLength=500,
            title="Reason",
            description="Why; recorded in the collection's HISTORY.jsonl.",
        ),
        "force": Param(
            False,
            type="boolean",
            title="Force",
            description="Roll back even to an index built from another model than the served user embeddings.",
        ),
    }
