"""Airflow with the Celery executor, Postgres and Redis, on one machine (`make airflow-celery`).

    python -m orchestration.celery_airflow --home var/airflow-celery --port 8080

Starts PostgreSQL (the metadata database and Celery's result backend), Redis (Celery's
broker), Airflow's api-server, scheduler and dag-processor with `CeleryExecutor`, and one
Celery worker, every server on 127.0.0.1; Ctrl-C (or SIGTERM) stops them all. Tasks run in
the Celery worker, not beside the scheduler: what they hand each other goes through the
artifact store (and XCom, in Postgres), as it must when workers are other machines.

The same settings make a real deployment (README, "Running at scale"):

    AIRFLOW__CORE__EXECUTOR=CeleryExecutor
    AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=postgresql+psycopg2://USER:PASSWORD@HOST:5432/airflow
    AIRFLOW__CELERY__BROKER_URL=redis://HOST:6379/0
    AIRFLOW__CELERY__RESULT_BACKEND=db+postgresql+psycopg2://USER:PASSWORD@HOST:5432/airflow

The result backend names `psycopg2` explicitly: SQLAlchemy 2.1 reads a bare `postgresql://`
as psycopg 3, which is not installed. `asyncpg` is installed because Airflow 3 opens an
async connection to Postgres too (`airflow db migrate` fails without it); `celery` stays
at 5.6.3 (5.7.0 breaks apache-airflow-providers-celery 3.26.0's import of
`celery.backends.database.retry`).

Postgres and Redis come from Debian (`apt-get install postgresql redis-server`; the
Makefile installs them when absent). PostgreSQL refuses to run as root: as root, its
processes run as the `postgres` user the Debian package creates, on a data folder that
user owns. Authentication is `trust` on 127.0.0.1 only: a development database.
"""

from __future__ import annotations

import argparse
import glob
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from config.settings import REPO_DIR
from orchestration.local_airflow import PASSWORDS_FILE, LocalAirflow

DEBIAN_PACKAGES = ("postgresql", "redis-server")


class ServiceUnavailableError(RuntimeError):
    """A program Postgres or Redis needs is not installed; the message says what to install."""


def postgres_bin_dir() -> Path:
    """The folder of initdb / pg_ctl: on PATH, else Debian's /usr/lib/postgresql/<v>/bin."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    versions = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0,
    )
    if versions:
        return Path(versions[-1]).parent
    raise ServiceUnavailableError("PostgreSQL is not installed (no initdb): apt-get install -y postgresql")


def redis_server() -> str:
    found = shutil.which("redis-server")
    if not found:
        raise ServiceUnavailableError("Redis is not installed (no redis-server): apt-get install -y redis-server")
    return found


def ensure_debian_packages(timeout_s: float = 600) -> None:
    """Installs postgresql and redis-server with apt-get when either is missing.

    apt's lock may be held by another install on this machine: it is waited for (apt-get's
    own lock timeout) and retried until `timeout_s`.

    Raises:
      ServiceUnavailableError: they are missing and cannot be installed (not root, no
        apt-get, or apt-get failed); the message says what to run.
    """
    try:
        postgres_bin_dir(), redis_server()
        return
    except ServiceUnavailableError as missing:
        if os.geteuid() != 0 or not shutil.which("apt-get"):
            raise ServiceUnavailableError(
                f"{missing}; as root: apt-get update && apt-get install -y {' '.join(DEBIAN_PACKAGES)}"
            ) from None
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    lock_wait = ["-o", "DPkg::Lock::Timeout=120"]
    deadline, last = time.monotonic() + timeout_s, ""
    while time.monotonic() < deadline:
        update = subprocess.run(["apt-get", *lock_wait, "update", "-qq"], env=env, capture_output=True, text=True)
        install = (
            subprocess.run(
                ["apt-get", *lock_wait, "install", "-y", "-qq", *DEBIAN_PACKAGES],
                env=env,
                capture_output=True,
                text=True,
            )
            if update.returncode == 0
            else update
        )
        if install.returncode == 0:
            postgres_bin_dir(), redis_server()
            return
        last = (install.stderr or install.stdout)[-1000:]
        if "lock" not in last.lower():
            break
        time.sleep(5)
    raise ServiceUnavailableError(f"apt-get install {' '.join(DEBIAN_PACKAGES)} failed: {last.strip()}")


class LocalPostgres:
    """A PostgreSQL server on 127.0.0.1:`port` with database `airflow` (user `airflow`).

    `data_dir` is created on the first start (initdb) and reused afterwards.
    """

    def __init__(self, data_dir: Path, port: int):
        self.data_dir, self.port = Path(data_dir), port
        self.bin = postgres_bin_dir()
        # As root, Postgres runs as `postgres` (it refuses root).
        self.user = "postgres" if os.geteuid() == 0 else None

    @property
    def url(self) -> str:
        return f"postgresql+psycopg2://airflow@127.0.0.1:{self.port}/airflow"

    def _run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        command = [*(("runuser", "-u", self.user, "--") if self.user else ()), *args]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError(
                f"{' '.join(args[:2])} failed ({done.returncode}): {done.stdout[-2000:]}{done.stderr[-2000:]}"
            )
        return done

    def start(self) -> None:
        if not (self.data_dir / "PG_VERSION").exists():
            self.data_dir.mkdir(parents=True, exist_ok=True)
            if self.user:
                record = pwd.getpwnam(self.user)
                os.chown(self.data_dir, record.pw_uid, record.pw_gid)
            self._run(str(self.bin / "initdb"), "-D", str(self.data_dir), "-U", "airflow", "--auth=trust", "-E", "UTF8")
            fresh = True
        else:
            fresh = False
        options = f"-p {self.port} -k {self.data_dir} -c listen_addresses=127.0.0.1"
        self._run(
            str(self.bin / "pg_ctl"),
            "-D",
            str(self.data_dir),
            "-o",
            options,
            "-l",
            str(self.data_dir / "server.log"),
            "-w",
            "-t",
            "60",
            "start",
        )
        if fresh:
            self._run(
                str(self.bin / "psql"),
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                "airflow",
                "-d",
                "postgres",
                "-c",
                "CREATE DATABASE airflow",
            )

    def stop(self) -> None:
        if (self.data_dir / "postmaster.pid").exists():
            self._run(str(self.bin / "pg_ctl"), "-D", str(self.data_dir), "-m", "fast", "-w", "-t", "60", "stop")


class LocalRedis:
    """A Redis server on 127.0.0.1:`port`, nothing persisted (a broker's queue)."""

    def __init__(self, work_dir: Path, port: int):
        self.work_dir, self.port = Path(work_dir), port
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        log = (self.work_dir / "redis.log").open("ab")
        self.process = subprocess.Popen(
            [
                redis_server(),
                "--bind",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.work_dir),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"redis-server exited with {self.process.returncode}: {(self.work_dir / 'redis.log').read_text()[-2000:]}"
                )
            try:
                import redis

                if redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1).ping():
                    return
            except OSError:
                pass
            except Exception as err:  # redis.ConnectionError is not an OSError
                if "Connection" not in type(err).__name__:
                    raise
            time.sleep(0.2)
        raise TimeoutError(f"redis-server did not answer on 127.0.0.1:{self.port} within 30 s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


class CeleryAirflow(LocalAirflow):
    """`LocalAirflow`'s components with CeleryExecutor, plus Postgres, Redis and a Celery worker.

    Args:
      home: AIRFLOW_HOME (logs, the admin password; Redis's folder under it).
      port: the API server's port on 127.0.0.1.
      postgres_port, redis_port: their ports on 127.0.0.1.
      postgres_dir: the database folder (default `<home>/postgres`; as root it must be a
        folder the `postgres` user can reach).
      concurrency: task processes of the Celery worker.
      extra_env: more variables for every process (EBR_ROOT, ...).
    """

    COMPONENTS = (
        *LocalAirflow.COMPONENTS,
        ("celery", "worker", "--skip-serve-logs", "--without-gossip", "--without-mingle"),
    )

    def __init__(
        self,
        home: Path,
        port: int,
        *,
        postgres_port: int = 5432,
        redis_port: int = 6379,
        postgres_dir: Path | None = None,
        concurrency: int = 2,
        extra_env: dict[str, str] | None = None,
    ):
        home = Path(home).resolve()
        self.postgres = LocalPostgres(postgres_dir or home / "postgres", postgres_port)
        self.redis = LocalRedis(home / "redis", redis_port)
        super().__init__(
            home,
            port,
            {
                "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": self.postgres.url,
                "AIRFLOW__CELERY__BROKER_URL": self.redis.url,
                "AIRFLOW__CELERY__RESULT_BACKEND": f"db+{self.postgres.url}",
                "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(concurrency),
                "AIRFLOW__CORE__PARALLELISM": str(max(concurrency, 2)),
                **(extra_env or {}),
            },
        )

    def start(self) -> None:
        self.postgres.start()
        self.redis.start()
        super().start()  # airflow db migrate, then the components

    def stop(self) -> None:
        try:
            super().stop()
        finally:
            try:
                self.redis.stop()
            finally:
                self.postgres.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--home", default=str(REPO_DIR / "var" / "airflow-celery"), help="AIRFLOW_HOME (logs, password, Redis)"
    )
    parser.add_argument(
        "--postgres-dir",
        help="PostgreSQL data folder (default: <home>/postgres; as root: under /tmp, owned by postgres)",
    )
    parser.add_argument("--port", type=int, default=8080, help="API server / UI port on 127.0.0.1")
    parser.add_argument("--postgres-port", type=int, default=5432)
    parser.add_argument("--redis-port", type=int, default=6379)
    parser.add_argument("--concurrency", type=int, default=2, help="task processes of the Celery worker")
    args = parser.parse_args(argv)
    ensure_debian_packages()
    home = Path(args.home)
    postgres_dir = (
        Path(args.postgres_dir)
        if args.postgres_dir
        else (
            Path(tempfile.gettempdir()) / f"ebr-airflow-postgres-{args.postgres_port}"
            if os.geteuid() == 0
            else home / "postgres"
        )
    )
    airflow = CeleryAirflow(
        home,
        args.port,
        postgres_port=args.postgres_port,
        redis_port=args.redis_port,
        postgres_dir=postgres_dir,
        concurrency=args.concurrency,
    )
    print(
        f"starting Postgres ({postgres_dir}, 127.0.0.1:{args.postgres_port}), Redis (127.0.0.1:{args.redis_port}) and Airflow "
        f"with CeleryExecutor in {airflow.home}",
        flush=True,
    )
    return airflow.run_until_signalled(
        f"\nAirflow (CeleryExecutor) is up: open {airflow.base_url}  and log in as  admin / {airflow.password}\n"
        f"  (the password is kept in {airflow.home / PASSWORDS_FILE})\n"
        f"  broker {airflow.redis.url}, metadata and results {airflow.postgres.url}\n"
        f"  component logs: {airflow.home}/{{api-server,scheduler,dag-processor,celery}}.log\n"
        "  Ctrl-C stops Airflow, the Celery worker, Redis and Postgres.",
        "stopping Airflow, Redis and Postgres ...",
    )


if __name__ == "__main__":
    sys.exit(main())
