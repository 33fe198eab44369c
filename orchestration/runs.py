"""The identity of a DAG run, and the names and folders derived from it.

Every version a run writes is named `version_name(f"{dag_id}-{run_id}", logical_date)`:
it sorts by the run's logical date and says which run made it, and a rerun of the same
DAG run (a retried or cleared task: same run id, same logical date) lands on the same
name, which is what makes the tasks idempotent.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from artifacts import version_name
from config import EbrConfig
from config.settings import REPO_DIR


@dataclass(frozen=True)
class RunIdentity:
    dag_id: str
    run_id: str
    logical_date: datetime  # timezone-aware, UTC

    def __post_init__(self) -> None:
        if self.logical_date.tzinfo is None:
            raise ValueError(f"logical_date {self.logical_date} must be timezone-aware")

    @classmethod
    def from_context(cls, context: Mapping[str, Any]) -> RunIdentity:
        """From an Airflow task context.

        Runs triggered by an asset event, or manually without a logical date, have no
        logical date in Airflow 3; their `run_after` (when the run was due) stands in.
        """
        dag_run = context["dag_run"]
        when = context.get("logical_date") or dag_run.logical_date or dag_run.run_after
        return cls(dag_run.dag_id, dag_run.run_id, _utc(when))

    @property
    def version(self) -> str:
        """The version name for everything this run writes (one per kind)."""
        return version_name(f"{self.dag_id}-{self.run_id}", when=self.logical_date)


def run_workdir(cfg: EbrConfig, run: RunIdentity) -> Path:
    """A local folder for this run's working files (training logs, the exported model)."""
    base = Path(cfg.orchestration.workdir) if cfg.orchestration.workdir else REPO_DIR / "var" / "work"
    return base / run.dag_id / run.version


def _utc(value: datetime) -> datetime:
    # Airflow hands out pendulum datetimes; plain datetimes keep XCom and names simple.
    return datetime.fromtimestamp(value.timestamp(), tz=UTC)
