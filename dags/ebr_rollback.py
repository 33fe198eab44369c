"""ebr_rollback: move an index collection's LATEST back to an earlier version (manual).

Trigger it from the UI ("Trigger DAG" shows a form) or the REST API with
{"collection": "stories|creators|users", "version": "previous", "reason": "...", "force": false}.
The version is `previous` (the default: the one published before LATEST's), a full
version name or a unique prefix of one; the form suggests the newest ones. The form
refuses a collection outside the list, a malformed version name and an empty reason;
check_request then refuses a version that does not exist, is ambiguous, incomplete or
fails its checksums, naming the newest that can be used; roll_back moves LATEST and
records the reason in HISTORY.jsonl. The service picks the move up at its next poll.

The form lists the versions under Airflow's `[ebr] root` (`orchestration.dag_support`);
parsing this file reads no pipeline configuration: the tasks call `load_config()`.
"""

from __future__ import annotations

from airflow.sdk import task

from orchestration import dag_support as ds
from orchestration.rollback import rollback_form


@ds.ebr_dag(
    "ebr_rollback",
    None,
    __doc__,
    retries=0,
    params=rollback_form(ds.dag_settings().root),  # lists the root's recent versions (local roots; cheap)
)
def ebr_rollback():
    @task
    def check_request(params: dict | None = None) -> dict:
        from config import load_config
        from orchestration.rollback import check_rollback_request

        return check_rollback_request(load_config(), params["collection"], params["version"], params["reason"])

    @task
    def roll_back(request: dict, params: dict | None = None, **context) -> dict:
        from config import load_config
        from orchestration.rollback import roll_back
        from orchestration.runs import RunIdentity

        return roll_back(load_config(), RunIdentity.from_context(context), request, force=bool(params["force"]))

    roll_back(check_request())


ebr_rollback()
