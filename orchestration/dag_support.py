"""The parse-time side of the DAGs: configuration, schedules, assets, trigger-form Params.

DAG files are parsed every few seconds by the DAG processor, so this module imports
only Airflow's SDK and the configuration (no TensorFlow, Beam, numpy or store I/O) and
reads the configuration once per process. The schedules and the artifact root of the
assets come from that configuration (`[orchestration]`, `root`): set `EBR_ROOT` or
`EBR_CONFIG` in the environment of every Airflow process, scheduler and workers alike.
"""

from __future__ import annotations

import functools
from datetime import UTC, datetime, timedelta
from typing import Any

from airflow.sdk import Asset, AssetOrTimeSchedule, CronTriggerTimetable, Param

from artifacts import MODELS, USER_EMBEDDINGS
from config import EbrConfig, load_config
from orchestration.indexes import COLLECTIONS

# artifacts.names: letters, digits, ".", "_", "+", "-"; starts alphanumeric; no "..";
# at most 128 characters. JSON Schema (the trigger form and the REST API) checks it.
VERSION_PATTERN = r"^(?!.*\.\.)[0-9A-Za-z][0-9A-Za-z._+-]{0,127}$"

TAGS = ["ebr"]


@functools.cache
def settings() -> EbrConfig:
    """The configuration, read once per parsing process (tasks call load_config() themselves)."""
    return load_config()


def start_date() -> datetime:
    day = settings().orchestration.start_date
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def default_args(retries: int = 1) -> dict[str, Any]:
    return {"owner": "ebr", "retries": retries, "retry_delay": timedelta(minutes=5)}


def cron(expression: str) -> CronTriggerTimetable:
    return CronTriggerTimetable(expression, timezone="UTC")


def kind_asset(kind: str) -> Asset:
    """The asset of an artifact kind: its folder under the root; an event = a new LATEST."""
    return Asset(name=f"ebr/{kind}", uri=f"{settings().root}/{kind}", group="ebr")


def model_asset() -> Asset:
    return kind_asset(MODELS)


def cron_or_new_model(expression: str) -> AssetOrTimeSchedule:
    """Runs on the cron schedule and whenever ebr_train publishes a model."""
    return AssetOrTimeSchedule(timetable=cron(expression), assets=model_asset())


def user_embeddings_asset() -> Asset:
    return kind_asset(USER_EMBEDDINGS)


def index_asset(collection: str) -> Asset:
    return kind_asset(f"indexes/{collection}")


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
