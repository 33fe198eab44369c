"""`make demo`: the whole pipeline through Airflow on a fresh synthetic world, then queries.

    python -m orchestration.demo --root file:///abs/var/demo --size small

1. writes a fresh synthetic world (`ebr data generate`);
2. runs `airflow dags test` of ebr_train, ebr_user_embeddings and ebr_story_index, in
   that order, with logical dates inside the world (its events end on the world's last
   day; a date after it would leave no story young enough to index), in a fresh Airflow
   home (SQLite) beside the root; each DAG's full log goes to a file, the console gets
   one line per DAG and, at the end, what LATEST names for every kind;
3. starts the retrieval service (`ebr serve`) on a free port of 127.0.0.1, waits until
   it is ready, asks it for a few users' top stories and prints them with what each
   story is (language, creator, hashtags) next to what the user engaged with, and the
   versions served; then stops the service.

The demo trains a shorter run than the defaults (`DEMO_SETTINGS`), so the whole demo
takes a few minutes on two cores; everything else is the configuration as shipped.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

from config.settings import REPO_DIR, WORLD_SIZES

BIN = Path(sys.executable).parent
DAG_ORDER = ("ebr_train", "ebr_user_embeddings", "ebr_story_index")

# Shorter training than the shipped defaults (30 epochs) and baselines at their default
# parameters (no validation search): the demo shows the pipeline, `make bench` measures
# the model. The gate still checks every depth against popularity and recent popularity.
DEMO_SETTINGS = {
    "EBR_TRAIN__EPOCHS": "4",
    "EBR_TRAIN__TUNE_BASELINES": "false",
    "EBR_TRAIN__MAX_EVAL_USERS": "1000",
    "EBR_EMBED__SHARDS": "2",
}


def logical_dates(start: datetime, days: int) -> dict[str, datetime]:
    """Logical dates inside a world whose events cover `days` days from `start`.

    Training runs the day after the last event day (a daily run covers the day before);
    the dataflows run late on the last day, so the newest stories are still fresh.
    """
    end = start + timedelta(days=days)
    return {
        "ebr_train": end,
        "ebr_user_embeddings": end - timedelta(hours=4),
        "ebr_story_index": end - timedelta(hours=2),
    }


def demo_environment(root: str, airflow_home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW_", "AIRFLOW__", "EBR_"))}
    env.update({
        "AIRFLOW_HOME": str(airflow_home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_DIR / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(airflow_home / "logs"),
        "TF_USE_LEGACY_KERAS": "1",
        "EBR_ROOT": root,
        "EBR_ORCHESTRATION__WORKDIR": str(airflow_home / "work"),
        **DEMO_SETTINGS,
    })  # fmt: skip
    return env


def run_logged(args: list[str], env: dict[str, str], log: Path) -> int:
    with log.open("wb") as out:
        return subprocess.run(args, env=env, stdout=out, stderr=subprocess.STDOUT).returncode


def run_dag(dag_id: str, when: datetime, env: dict[str, str], logs: Path) -> None:
    log = logs / f"{dag_id}.log"
    started = time.perf_counter()
    code = run_logged([str(BIN / "airflow"), "dags", "test", dag_id, when.isoformat()], env, log)
    text = log.read_text(errors="replace")
    succeeded = code == 0 and "state=success" in text
    print(f"  {dag_id:<22} logical date {when:%Y-%m-%d %H:%M}Z  {'success' if succeeded else 'FAILED'}  "
          f"{time.perf_counter() - started:5.0f} s   (log: {log})", flush=True)  # fmt: skip
    if not succeeded:
        print("\n".join(text.splitlines()[-60:]))
        raise SystemExit(f"{dag_id} failed; the whole log is in {log}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, service: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if service.poll() is not None:
            raise SystemExit(f"ebr serve exited with {service.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"the service at {url} was not ready within {timeout:.0f} s")


def show_answers(cfg, url: str, n_users: int, k: int) -> None:
    """A few users' top stories, each story described, beside what the user engaged with."""
    import pyarrow.compute as pc

    from cli.serve_commands import format_versions
    from serving.client import RetrievalClient
    from warehouse import Warehouse

    warehouse = Warehouse.from_config(cfg)
    users = warehouse.read_table("users").to_pylist()
    stories = {s["story_id"]: s for s in warehouse.read_table("stories", ["story_id", "creator_id", "language", "country", "hashtags"]).to_pylist()}
    last_day = warehouse.event_days()[-1]
    events = warehouse.read_events(start=last_day - timedelta(days=6), columns=["user_id", "story_id", "long_view", "favorite", "share"])
    engaged = events.filter(pc.or_(pc.or_(events["long_view"], events["favorite"]), events["share"]))
    step = max(len(users) // n_users, 1)
    with RetrievalClient(url, token=cfg.serving.token) as client:
        for user in users[::step][:n_users]:
            mine = engaged.filter(pc.equal(engaged["user_id"], user["user_id"]))["story_id"].to_pylist()
            tags = Counter(t for sid in mine for t in stories[sid]["hashtags"])
            print(f"\nuser {user['user_id']} ({user['country']}, speaks {user['language']}); "
                  f"engaged last week with {len(mine)} stories, mostly {', '.join(t for t, _ in tags.most_common(5)) or '-'}")  # fmt: skip
            answer = client.retrieve("stories", user_id=user["user_id"], k=k)
            for rank, hit in enumerate(answer["items"], 1):
                story = stories.get(hit["id"], {})
                print(f"  {rank:>2}. {hit['id']:<12} {hit['score']:7.4f}  {story.get('language', '?')}/{story.get('country', '?')}  "
                      f"by {story.get('creator_id', '?'):<10} {' '.join(story.get('hashtags') or [])}")  # fmt: skip
            served = answer["served"]
            print(f"      served from index {served['index_version']}, user embeddings {served['user_embeddings_version']}")
        print("\nversions served:")
        print(format_versions(client.versions()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default=f"file://{REPO_DIR}/var/demo", help="artifact root (file:///abs or gs://...)")
    parser.add_argument("--size", default="small", choices=sorted(WORLD_SIZES), help="synthetic world preset")
    parser.add_argument("--users", type=int, default=3, help="users to query")
    parser.add_argument("-k", type=int, default=8, help="stories per user")
    args = parser.parse_args(argv)

    began = time.perf_counter()
    airflow_home = Path(args.root.removeprefix("file://") + "-airflow") if args.root.startswith("file://") else REPO_DIR / "var" / "demo-airflow"
    shutil.rmtree(airflow_home, ignore_errors=True)
    (airflow_home / "logs").mkdir(parents=True)
    env = demo_environment(args.root, airflow_home)
    env["EBR_WORLD__SIZE"] = args.size

    print(f"1. a fresh synthetic world ({args.size}) at {args.root}", flush=True)
    subprocess.run([str(BIN / "ebr"), "data", "generate", "--size", args.size, "--overwrite", "--no-progress"], env=env, check=True)
    from config import load_config

    cfg = load_config(environ=env)
    start = datetime(cfg.world.start_date.year, cfg.world.start_date.month, cfg.world.start_date.day, tzinfo=UTC)
    dates = logical_dates(start, cfg.world.count("days"))

    print(f"\n2. the pipeline through Airflow (airflow dags test; AIRFLOW_HOME {airflow_home}, SQLite)", flush=True)
    if run_logged([str(BIN / "airflow"), "db", "migrate"], env, airflow_home / "logs" / "db-migrate.log"):
        raise SystemExit(f"airflow db migrate failed; see {airflow_home / 'logs' / 'db-migrate.log'}")
    for dag_id in DAG_ORDER:
        run_dag(dag_id, dates[dag_id], env, airflow_home / "logs")
    subprocess.run([str(BIN / "ebr"), "artifacts", "list"], env=env, check=True)

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    print(f"\n3. the retrieval service on {url}", flush=True)
    service_log = airflow_home / "logs" / "serve.log"
    with service_log.open("wb") as out:
        service = subprocess.Popen([str(BIN / "ebr"), "serve", "--port", str(port)], env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_ready(url, service)
        show_answers(cfg, url, args.users, args.k)
    finally:
        if service.poll() is None:
            os.killpg(service.pid, signal.SIGTERM)
            try:
                service.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(service.pid, signal.SIGKILL)
                service.wait()
        print(f"\nservice stopped (log: {service_log})")
    print(f"demo done in {time.perf_counter() - began:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
