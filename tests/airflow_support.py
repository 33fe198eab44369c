"""Running the project's DAGs in tests: an Airflow home, a tiny pipeline, real processes.

Airflow reads its configuration when it is first imported, so a test process gets ONE
Airflow home (`process_airflow_home`), created on first use and migrated by the real
`airflow db migrate` command; the tests import Airflow only after that. The pipeline
configuration travels the way it does in production, through `EBR_*` variables in the
environment of whatever runs the tasks (and of the Beam job processes they start).
"""

from __future__ import annotations

import atexit
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DAGS_FOLDER = REPO / "dags"
BIN = Path(sys.executable).parent
DAG_IDS = ("ebr_train", "ebr_user_embeddings", "ebr_story_index", "ebr_rollback", "ebr_retention")

# A tiny world and a small, short training run: the whole pipeline in about a minute.
TINY_PIPELINE = {
    "EBR_WORLD__SIZE": "tiny",
    "EBR_TRAIN__EPOCHS": "2",
    "EBR_TRAIN__BATCH_SIZE": "256",
    "EBR_TRAIN__HOLDOUT_DAYS": "2",
    "EBR_TRAIN__EVAL_KS": "[10,100]",
    "EBR_TRAIN__MAX_EVAL_USERS": "200",
    "EBR_MODEL__MLP_WIDTH": "32",
    "EBR_MODEL__ID_EMBEDDING_DIM": "16",
    "EBR_MODEL__CROSS_PROJECTION_DIM": "8",
    "EBR_MODEL__RESNET_BLOCKS": "1",
    "EBR_MODEL__CROSS_LAYERS": "1",
    "EBR_EMBED__BUCKETS": "4",
    "EBR_EMBED__SHARDS": "2",
    "EBR_INDEX__VALIDATION_QUERIES": "200",
}


def airflow_environment(home: Path, **extra: str) -> dict[str, str]:
    """Variables that point Airflow at `home` (SQLite inside it) and this project's dags/."""
    return {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_FOLDER),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(home / "logs"),
        "TF_USE_LEGACY_KERAS": "1",
        **extra,
    }


_HOME: Path | None = None


def process_airflow_home() -> Path:
    """This process's Airflow home: set in os.environ and migrated, once per process."""
    global _HOME
    if _HOME is None:
        if "airflow" in sys.modules:
            raise RuntimeError("Airflow was imported before its home was set; import it inside tests only")
        home = Path(tempfile.mkdtemp(prefix="ebr-airflow-"))
        atexit.register(shutil.rmtree, home, True)
        os.environ.update(airflow_environment(home))
        migrate(home, os.environ)
        _HOME = home
    return _HOME


def migrate(home: Path, env: dict[str, str] | os._Environ) -> None:
    done = subprocess.run([str(BIN / "airflow"), "db", "migrate"], env=dict(env), capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise RuntimeError(f"airflow db migrate failed in {home}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")


def load_dags() -> dict[str, Any]:
    """Every DAG of dags/, parsed the way the DAG processor does; fails on import errors."""
    from airflow.dag_processing.dagbag import DagBag

    from orchestration import dag_support

    dag_support.settings.cache_clear()  # parse against the current EBR_* environment
    bag = DagBag(dag_folder=str(DAGS_FOLDER))
    if bag.import_errors:
        raise AssertionError(f"DAG import errors: {bag.import_errors}")
    return bag.dags


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class AirflowProcesses:
    """The real Airflow components on 127.0.0.1: api-server, scheduler, dag-processor.

    Simple auth manager with one admin whose password we choose (written to the
    passwords file before the API server starts). Always `stop()` it (a fixture does).
    """

    COMPONENTS = (("api-server",), ("scheduler",), ("dag-processor",))

    def __init__(self, home: Path, extra_env: dict[str, str]):
        self.home = home
        self.port = free_port()
        self.password = secrets.token_urlsafe(12)
        self.base_url = f"http://127.0.0.1:{self.port}"
        home.mkdir(parents=True, exist_ok=True)
        passwords = home / "simple_auth_manager_passwords.json"
        passwords.write_text(json.dumps({"admin": self.password}))
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "EBR_"))},
            **airflow_environment(
                home,
                AIRFLOW__CORE__EXECUTOR="LocalExecutor",
                AIRFLOW__CORE__PARALLELISM="2",
                AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS="admin:admin",
                AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE=str(passwords),
                AIRFLOW__API__HOST="127.0.0.1",
                AIRFLOW__API__PORT=str(self.port),
                AIRFLOW__API__BASE_URL=self.base_url,
                AIRFLOW__API__WORKERS="1",
                AIRFLOW__CORE__EXECUTION_API_SERVER_URL=f"{self.base_url}/execution/",
                AIRFLOW__API_AUTH__JWT_SECRET=secrets.token_hex(32),
                AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL="5",
                AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL="5",
                AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC="1",
                AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION="True",
            ),
            **extra_env,
        }
        self.processes: list[subprocess.Popen] = []

    def start(self) -> None:
        migrate(self.home, self.env)
        for args in self.COMPONENTS:
            log = (self.home / f"{args[0]}.log").open("wb")
            self.processes.append(subprocess.Popen(
                [str(BIN / "airflow"), *args], env=self.env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stop() ends it with its children
            ))  # fmt: skip

    def stop(self) -> None:
        for proc in self.processes:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for proc in self.processes:
            try:
                proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)

    def logs(self, lines: int = 40) -> str:
        out = []
        for args in self.COMPONENTS:
            path = self.home / f"{args[0]}.log"
            text = path.read_text(errors="replace").splitlines()[-lines:] if path.exists() else []
            out.append(f"--- {args[0]} ---\n" + "\n".join(text))
        return "\n".join(out)

    # -- REST API (v2) ------------------------------------------------------------------

    def request(self, method: str, path: str, body: Any = None, token: str | None = None) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(f"{self.base_url}{path}", data=data, method=method)
        request.add_header("Content-Type", "application/json")
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as err:
            payload = err.read()
            try:
                return err.code, json.loads(payload)
            except json.JSONDecodeError:
                return err.code, payload.decode(errors="replace")

    def wait_until_up(self, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for proc, args in zip(self.processes, self.COMPONENTS, strict=True):
                if proc.poll() is not None:
                    raise RuntimeError(f"airflow {args[0]} exited with {proc.returncode}:\n{self.logs()}")
            try:
                status, _ = self.request("GET", "/api/v2/monitor/health")
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(1)
        raise TimeoutError(f"the API server did not answer on {self.base_url} within {timeout} s:\n{self.logs()}")

    def token(self) -> str:
        status, body = self.request("POST", "/auth/token", {"username": "admin", "password": self.password})
        if status not in (200, 201):
            raise RuntimeError(f"POST /auth/token: {status} {body}")
        return body["access_token"]

    def wait_for(self, predicate, what: str, timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(1)
        raise TimeoutError(f"{what} within {timeout} s:\n{self.logs()}")
