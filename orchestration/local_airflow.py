"""Airflow on one machine, for `make airflow` and the integration test.

    python -m orchestration.local_airflow --home var/airflow --port 8080
    python -m orchestration.local_airflow --demo-root file:///abs/var/demo   # what `make airflow` runs

Starts the three components Airflow 3 needs (api-server, scheduler with LocalExecutor,
dag-processor) with SQLite in the home folder, this project's `dags/` and no examples,
every server on 127.0.0.1: the API server binds there, and the scheduler runs with
`--skip-serve-logs` (its log server would listen on every interface; the API server reads
the task logs from the shared local log folder instead). The triggerer is not started:
no task here defers. The simple auth manager has one user, `admin`, whose password is
kept in `<home>/simple_auth_manager_passwords.json.generated` (made on the first start).
Ctrl-C (or SIGTERM) stops every component.

`--demo-root ROOT` opens the Airflow home `make demo` wrote for that root (its DAG runs
and their logs) with the demo's settings, so the DAGs there work on the demo's root;
`--home` opens any other home with the configured root (`EBR_ROOT` / `EBR_CONFIG`).
Either way the DAG processor is given that root as the DAGs' `[ebr] root` Airflow
setting (`dag_settings_environment`); other `[ebr]` settings (schedules, ...) pass
through from the caller's `AIRFLOW__EBR__*` variables.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from config.settings import REPO_DIR

BIN = Path(sys.executable).parent
PASSWORDS_FILE = "simple_auth_manager_passwords.json.generated"


def airflow_environment(home: Path, **extra: str) -> dict[str, str]:
    """Variables that point Airflow at `home` (SQLite inside it) and this project's dags/."""
    return {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_DIR / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(home / "logs"),
        "TF_USE_LEGACY_KERAS": "1",
        **extra,
    }


def dag_settings_environment(env: Mapping[str, str]) -> dict[str, str]:
    """The `[ebr]` Airflow settings a launcher gives every Airflow process it starts.

    The DAG files read no pipeline configuration when they are parsed
    (`orchestration.dag_support`), so the root their assets and the rollback form name is
    an Airflow setting: `AIRFLOW__EBR__ROOT`, here the root the tasks' `load_config()`
    finds in `env` (`EBR_ROOT` / `EBR_CONFIG`), unless `env` sets it already.
    """
    from config import load_config

    if "AIRFLOW__EBR__ROOT" in env:
        return {}
    return {"AIRFLOW__EBR__ROOT": load_config(environ=env).root}


def migrate(home: Path, env: dict[str, str]) -> None:
    done = subprocess.run([str(BIN / "airflow"), "db", "migrate"], env=env, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise RuntimeError(f"airflow db migrate failed in {home}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")


def _kept_secret(path: Path, make) -> str:
    """A value made once and kept in `path` (so every start and component agrees)."""
    if not path.exists():
        path.write_text(make())
        path.chmod(0o600)
    return path.read_text().strip()


class LocalAirflow:
    """api-server, scheduler and dag-processor on 127.0.0.1:`port`; `stop()` them always."""

    COMPONENTS = (("api-server",), ("scheduler", "--skip-serve-logs"), ("dag-processor",))

    def __init__(self, home: Path, port: int, extra_env: dict[str, str] | None = None):
        self.home = Path(home).resolve()
        self.home.mkdir(parents=True, exist_ok=True)
        self.port = port
        self.base_url = f"http://127.0.0.1:{port}"
        passwords = self.home / PASSWORDS_FILE
        self.password = json.loads(_kept_secret(passwords, lambda: json.dumps({"admin": secrets.token_urlsafe(12)})))[
            "admin"
        ]
        jwt_secret = _kept_secret(self.home / ".jwt_secret", lambda: secrets.token_hex(32))
        # The caller's own Airflow settings would point the components elsewhere, except the DAGs' [ebr] ones.
        inherited = {
            k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW") or k.startswith("AIRFLOW__EBR__")
        }
        self.env = {
            **inherited,
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            **airflow_environment(
                self.home,
                AIRFLOW__CORE__EXECUTOR="LocalExecutor",
                AIRFLOW__CORE__PARALLELISM="2",
                AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS="admin:admin",
                AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE=str(passwords),
                AIRFLOW__API__HOST="127.0.0.1",
                AIRFLOW__API__PORT=str(port),
                AIRFLOW__API__BASE_URL=self.base_url,
                AIRFLOW__API__WORKERS="1",
                AIRFLOW__CORE__EXECUTION_API_SERVER_URL=f"{self.base_url}/execution/",
                AIRFLOW__API_AUTH__JWT_SECRET=jwt_secret,
                AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL="10",
                AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK="False",
            ),
            **(extra_env or {}),
        }
        self.env.update(dag_settings_environment(self.env))
        self.processes: list[subprocess.Popen] = []

    def start(self) -> None:
        migrate(self.home, self.env)
        for args in self.COMPONENTS:
            log = (self.home / f"{args[0]}.log").open("ab")
            self.processes.append(
                subprocess.Popen(
                    [str(BIN / "airflow"), *args],
                    env=self.env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # its own process group: stop() ends it with its children
                )
            )

    def stop(self) -> None:
        for proc in self.processes:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
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
            out.append(f"--- {args[0]} ({path}) ---\n" + "\n".join(text))
        return "\n".join(out)

    def request(self, method: str, path: str, body: Any = None, token: str | None = None) -> tuple[int, Any]:
        """One call of the REST API: (status, decoded JSON body)."""
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
                if self.request("GET", "/api/v2/monitor/health")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(1)
        raise TimeoutError(f"the API server did not answer on {self.base_url} within {timeout:.0f} s:\n{self.logs()}")

    def run_until_signalled(self, banner: str, stopping_message: str) -> int:
        """What `make airflow` does: start, print `banner` once the API answers, then watch.

        Returns 0 after SIGINT or SIGTERM, 1 (with the components' logs on stderr) when a
        component exits by itself; every component is stopped either way.
        """
        stopping = []
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stopping.append(True))
        try:
            self.start()
            self.wait_until_up()
            print(banner, flush=True)
            while not stopping:
                for proc, args in zip(self.processes, self.COMPONENTS, strict=True):
                    if proc.poll() is not None:
                        name = " ".join(a for a in args[:2] if not a.startswith("-"))  # "scheduler", "celery worker"
                        print(f"airflow {name} exited with {proc.returncode}:\n{self.logs()}", file=sys.stderr)
                        return 1
                time.sleep(1)
        finally:
            print(stopping_message, flush=True)
            self.stop()
        return 0

    def token(self) -> str:
        """A JWT for the REST API (POST /auth/token with the admin's password)."""
        status, body = self.request("POST", "/auth/token", {"username": "admin", "password": self.password})
        if status not in (200, 201):
            raise RuntimeError(f"POST /auth/token: {status} {body}")
        return body["access_token"]


def demo_airflow(root: str, port: int) -> LocalAirflow:
    """Airflow on the home `make demo` wrote for ROOT, with the settings it saved there
    (its EBR_* variables: root, shorter training, its world size's), or the demo's defaults."""
    from orchestration.demo import SETTINGS_FILE, demo_airflow_home, demo_settings

    home = demo_airflow_home(root)
    saved = home / SETTINGS_FILE
    settings = json.loads(saved.read_text()) if saved.exists() else demo_settings(root, home)
    return LocalAirflow(home, port, settings)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--home", default=str(REPO_DIR / "var" / "airflow"), help="AIRFLOW_HOME (SQLite, logs, password)"
    )
    where.add_argument(
        "--demo-root", metavar="URI", help="the Airflow home and settings `make demo` used for this root"
    )
    parser.add_argument("--port", type=int, default=8080, help="API server / UI port on 127.0.0.1")
    args = parser.parse_args(argv)

    if args.demo_root:
        airflow = demo_airflow(args.demo_root, args.port)
        home = airflow.home
        if not (home / "airflow.db").exists():
            print(
                f"no demo has run for {args.demo_root} yet ({home} has no airflow.db): `make demo` first, "
                "or the DAGs will find nothing to work on",
                flush=True,
            )
    else:
        airflow = LocalAirflow(Path(args.home), args.port)
    root = airflow.env.get("EBR_ROOT") or "the configured one, config/defaults.toml"
    print(f"starting Airflow in {airflow.home} (DAGs: {REPO_DIR / 'dags'}; artifact root: {root})", flush=True)
    return airflow.run_until_signalled(
        f"\nAirflow is up: open {airflow.base_url}  and log in as  admin / {airflow.password}\n"
        f"  (the password is kept in {airflow.home / PASSWORDS_FILE})\n"
        f"  component logs: {airflow.home}/{{api-server,scheduler,dag-processor}}.log; task logs: {airflow.home}/logs/\n"
        "  DAGs start paused: switch one on, or press 'Trigger' (ebr_rollback asks for its parameters).\n"
        "  Trigger on a scheduled DAG: untick 'Unpause ... on trigger', or its schedule starts at once and\n"
        "  the manual run queues behind that run (ebr_rollback has no schedule: leave it ticked).\n"
        "  Ctrl-C stops Airflow.",
        "stopping Airflow ...",
    )


if __name__ == "__main__":
    sys.exit(main())
