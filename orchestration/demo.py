"""`make demo`: the whole pipeline through Airflow on a fresh synthetic world, then queries.

    python -m orchestration.demo --root file:///abs/var/demo --size small [--shards 2]

1. writes a fresh synthetic world (`ebr data generate`);
2. runs `airflow dags test` of ebr_train, ebr_user_embeddings and ebr_story_index (twice,
   half an hour apart, as its schedule would: so there is an earlier index to roll back
   to), with logical dates inside the world (its events end on the world's last day; a
   date after it would leave no story young enough to index), in a fresh Airflow home
   (SQLite) beside the root, the one `make airflow` opens; each DAG's full log goes to a
   file while the console gets its progress as it happens (`DagProgress`: tasks as they
   start and end, training epochs with the validation metric, the gate's decision, the
   Beam jobs' counts, index recall) and, at the end, what LATEST names for every kind;
3. starts the retrieval service (`ebr serve`) on a free port of 127.0.0.1, waits until
   it is ready, asks it for a few users' top stories and prints them with what each
   story is (language, creator, hashtags) next to what the user engaged with, and the
   versions served; then stops the service and prints the next steps for this root
   (`next_steps`): serve, query, Airflow on the same runs, roll back.

With `--shards S` (`make demo DEMO_SHARDS=2`) the DAGs publish every index as a set of S
shards (`index.shards = S`), and step 3 is the sharded tier instead: S shard servers
(`ebr serve --shard I/S`) and the router (`ebr route`) over them, each on a free port of
127.0.0.1 (`orchestration.demo_tier.RetrievalTier`); the same answers come through the
router, each with its `coverage`, and the next steps are the tier's commands. Every
process the demo starts is stopped when it ends, fails or is interrupted.

The demo trains a shorter run than the defaults (`DEMO_SETTINGS`), so the whole demo
takes a few minutes on two cores; everything else is the configuration as shipped, and
`EBR_*` variables of the caller's environment override both (`demo_settings`).
`make airflow` opens the demo's Airflow home with the same settings and root
(`orchestration.local_airflow --demo-root`), so its runs are there.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from config.settings import REPO_DIR, WORLD_SIZES
from orchestration.demo_tier import RetrievalTier, tier_commands

BIN = Path(sys.executable).parent
# ebr_story_index twice, half an hour apart: the second publish leaves the first to roll back to.
DAG_ORDER = ("ebr_train", "ebr_user_embeddings", "ebr_story_index", "ebr_story_index")

# Shorter training than the shipped defaults (30 epochs) and baselines at their default
# parameters (no validation search): the demo shows the pipeline, `make bench` measures
# the model. The gate still checks every depth against popularity and recent popularity.
DEMO_SETTINGS = {
    "EBR_TRAIN__EPOCHS": "4",
    "EBR_TRAIN__TUNE_BASELINES": "false",
    "EBR_TRAIN__MAX_EVAL_USERS": "1000",
    "EBR_EMBED__SHARDS": "2",
}
# The tiny world (DEMO_SIZE=tiny: 300 users, about a minute of training) makes ~26
# optimisation steps an epoch: the default 200-step warm-up would outlast the run, and its
# test set (~1,900 positives) is too small to decide at every depth, so the gate reads
# recall@100 only, as the tests' tiny pipeline does (tests/airflow_support.py).
SIZE_SETTINGS = {
    "tiny": {
        "EBR_TRAIN__WARMUP_STEPS": "10",
        "EBR_GATE__METRICS": '["recall@100"]',
        "EBR_GATE__MIN_EVAL_POSITIVES": "100",
    },
}


def demo_runs(start: datetime, days: int) -> list[tuple[str, datetime]]:
    """(DAG, logical date) in `DAG_ORDER`, inside a world whose events cover `days` days from `start`.

    Training runs the day after the last event day (a daily run covers the day before);
    the dataflows run late on the last day, so the newest stories are still fresh; the
    story index runs twice, 30 minutes apart, as its schedule does.
    """
    end = start + timedelta(days=days)
    dates = [end, end - timedelta(hours=4), end - timedelta(hours=2, minutes=30), end - timedelta(hours=2)]
    return list(zip(DAG_ORDER, dates, strict=True))


def demo_airflow_home(root: str) -> Path:
    """The demo's Airflow home: beside a local root (`<root>-airflow`), else under var/."""
    return (
        Path(root.removeprefix("file://") + "-airflow")
        if root.startswith("file://")
        else REPO_DIR / "var" / "demo-airflow"
    )


def demo_settings(root: str, airflow_home: Path, size: str = "small", shards: int = 1) -> dict[str, str]:
    """The demo's `EBR_*` variables: a work folder in its Airflow home, `DEMO_SETTINGS` and the
    size's, then the caller's own `EBR_*`, which win (the tests make training tiny so); then
    its root, world size and `index.shards` (the tier it starts serves only sets of that size)."""
    mine = {k: v for k, v in os.environ.items() if k.startswith("EBR_") and k not in ("EBR_ROOT", "EBR_CONFIG")}
    return {
        "EBR_ORCHESTRATION__WORKDIR": str(airflow_home / "work"),
        **DEMO_SETTINGS,
        **SIZE_SETTINGS.get(size, {}),
        **mine,
        "EBR_ROOT": root,
        "EBR_WORLD__SIZE": size,
        "EBR_INDEX__SHARDS": str(shards),  # the tier step 3 starts serves sets of this many shards only
    }


SETTINGS_FILE = "ebr-settings.json"  # in the demo's Airflow home: what `make airflow` gives the DAGs there


def demo_environment(root: str, airflow_home: Path, size: str = "small", shards: int = 1) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW_", "AIRFLOW__", "EBR_"))}
    env.update(
        {
            "AIRFLOW_HOME": str(airflow_home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_DIR / "dags"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(airflow_home / "logs"),
            "AIRFLOW__EBR__ROOT": root,  # the DAGs' [ebr] root: parsing reads no EBR_* (orchestration.dag_support)
            "TF_USE_LEGACY_KERAS": "1",
            **demo_settings(root, airflow_home, size, shards),
        }
    )
    return env


def run_logged(args: list[str], env: dict[str, str], log: Path) -> int:
    with log.open("wb") as out:
        return subprocess.run(args, env=env, stdout=out, stderr=subprocess.STDOUT).returncode


# One line of `airflow dags test` output (structlog's console format):
#   2026-12-01T10:47:43.188978Z [info     ] indexes/stories/...: full build, recall@10 0.9994 [orchestration.indexes] loc=indexes.py:41
LOG_LINE = re.compile(
    r"^(?P<when>\d{4}-\d\d-\d\dT[\d:.]+)Z \[(?P<level>\w+)\s*\] (?P<message>.*?) \[(?P<logger>[\w.]+)\](?P<rest>.*)$"
)
TASK_STARTS = re.compile(r"^\[DAG TEST\] starting task_id=(?P<task>\S+)")
TASK_ENDS = re.compile(r"^\[DAG TEST\] end task task_id=(?P<task>\S+)")
NEW_STATE = re.compile(r"\bnew_state=(?P<state>\w+)")
# The Beam job's own lines, relayed by the Beam hook as "<logger>: <message>"
# (orchestration.beam_task_logs), and its closing print "<kind>/<snapshot>: N embeddings; ...".
BEAM_JOB_LINE = re.compile(r"^(?P<logger>(beam_jobs|artifacts|models|warehouse)[\w.]*): (?P<message>.*)$")
BEAM_OUTCOME = re.compile(r"^(?P<kind>embeddings/\w+)/(?P<snapshot>\S+): (?P<count>\d+) embeddings;")
# Keras' epoch summary (verbose=2): "112/112 - 75s - loss: 4.4286 - regularization_loss: ..."
EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit)\b: ")
KERAS_EPOCH = re.compile(r"^\s*\d+/\d+ - (?P<seconds>\d+)s - loss: (?P<loss>[\d.e+-]+)")
# Version names carry their run id (70+ characters); the console shows up to the DAG's name.
LONG_VERSION = re.compile(r"(\d{8}T\d{6}Z-[A-Za-z_]+)-[0-9A-Za-z._+-]*__[0-9A-Za-z._+-]+")
PROJECT_LOGGERS = ("orchestration.", "models.")  # the task logic: every line is progress
QUIET_PROJECT_LOGGERS = (
    "artifacts.",
    "beam_jobs.",
    "index_builder.",
    "warehouse.",
    "serving.",
)  # warnings and errors only
LOUD_LEVELS = {"warning", "error", "critical", "exception"}
WIDTH = 160


def shorten(text: str, width: int = WIDTH) -> str:
    text = LONG_VERSION.sub(r"\1…", text)
    return text if len(text) <= width else text[: width - 1] + "…"


class DagProgress:
    """What the console shows of one `airflow dags test` while it runs, line by line.

    `feed(line)` returns the lines to print (often none): each task as it starts and
    ends (with its final state and time), the task logic's own log lines (warehouse
    read, epochs with the validation metric, the gate's decision, snapshot and index
    checks, recall, publishes), Keras' epoch summaries, the Beam jobs' results and,
    when an embedding task ends, `describe_snapshot(kind, snapshot)` (the job's counts),
    and every warning or error of the project's code or any error at all.
    """

    def __init__(self, describe_snapshot: Callable[[str, str], str] | None = None):
        self.describe_snapshot = describe_snapshot
        self.began: float | None = None  # the times shown are the log's, from its first line
        self.now = 0.0
        self.task_began: dict[str, float] = {}
        self.state: str | None = None
        self.snapshots: list[tuple[str, str]] = []
        self.failed_tasks: list[str] = []

    def _at(self, text: str, indent: int = 2) -> str:
        return shorten(f"    [{self.now - (self.began or self.now):5.0f} s] {' ' * indent}{text}")

    def feed(self, line: str) -> list[str]:
        line = line.rstrip("\n")
        keras = KERAS_EPOCH.match(line)
        if keras:
            return [self._at(f"loss {float(keras['loss']):.4f} ({keras['seconds']} s)", 4)]
        parsed = LOG_LINE.match(line)
        if not parsed:
            return [self._at(line, 6)] if EXCEPTION_LINE.match(line) else []  # what a traceback ends with
        self.now = datetime.fromisoformat(parsed["when"]).timestamp()
        self.began = self.now if self.began is None else self.began
        level, message, logger = parsed["level"].lower(), parsed["message"].strip(), parsed["logger"]
        if logger == "airflow.sdk.definitions.dag":
            return self._task_event(message)
        if logger.endswith("routes.task_instances") and message.startswith("Task instance state updated"):
            state = NEW_STATE.search(parsed["rest"])
            self.state = state["state"] if state else self.state
            return []
        if logger.endswith("BeamHook"):  # the provider's or orchestration.beam_task_logs.LeveledBeamHook
            return self._beam_line(level, message)
        if logger.startswith(PROJECT_LOGGERS) or (logger.startswith(QUIET_PROJECT_LOGGERS) and level in LOUD_LEVELS):
            return [self._at(self._leveled(level, message), 4)]
        if level in ("error", "critical", "exception"):
            return [self._at(f"{level.upper()} {logger}: {message}", 4)]
        return []

    def _task_event(self, message: str) -> list[str]:
        starts, ends = TASK_STARTS.match(message), TASK_ENDS.match(message)
        if starts:
            self.task_began[starts["task"]] = self.now
            self.state = None
            return [self._at(f"{starts['task']} started")]
        if ends:
            task = ends["task"]
            took = self.now - self.task_began.pop(task, self.now)
            state = self.state or "?"
            if state in ("failed", "upstream_failed"):
                self.failed_tasks.append(task)
            out = [self._at(f"{task} {state} ({took:.0f} s)")]
            if state == "up_for_retry":
                out.append(
                    self._at(
                        "Airflow retries it after the task's retry delay (5 min); the error is above and in the log", 4
                    )
                )
            if task.startswith("embed_") and self.describe_snapshot:
                out += [self._at(self.describe_snapshot(kind, snapshot), 4) for kind, snapshot in self.snapshots]
                self.snapshots.clear()
            return out
        return []

    def _beam_line(self, level: str, message: str) -> list[str]:
        outcome = BEAM_OUTCOME.match(message)
        if outcome:
            self.snapshots.append((outcome["kind"], outcome["snapshot"]))
            return [self._at(f"Beam: {message}", 4)]
        job = BEAM_JOB_LINE.match(message)
        if job and (level in LOUD_LEVELS or job["logger"].startswith(PROJECT_LOGGERS)):
            return [self._at(self._leveled(level, f"Beam: {message}"), 4)]
        if level in ("error", "critical"):
            return [self._at(f"{level.upper()} Beam: {message}", 4)]
        return []

    @staticmethod
    def _leveled(level: str, message: str) -> str:
        return message if level in ("info", "debug") else f"{level.upper()} {message}"


def snapshot_counts(store, kind: str, snapshot: str) -> str:
    """The Beam job's counts as its snapshot's manifest records them: embeddings, rows read, dead letters."""
    metrics = store.kind(kind).manifest(snapshot).metrics
    read = ", ".join(f"{table} {count:,}" for table, count in sorted(metrics.get("rows_read", {}).items()))
    dead = metrics.get("dead_letters") or {}
    dead_text = ", ".join(f"{source} {count:,}" for source, count in sorted(dead.items())) or "none"
    return f"{kind}: {int(metrics.get('count', 0)):,} embeddings from rows read {read}; dead letters: {dead_text}"


def run_dag(
    dag_id: str,
    when: datetime,
    env: dict[str, str],
    logs: Path,
    describe_snapshot: Callable[[str, str], str] | None = None,
) -> None:
    """`airflow dags test` of one DAG: its whole output to `logs/<dag_id>-<date>.log`, its progress to the console."""
    log = logs / f"{dag_id}-{when:%Y%m%dT%H%M}.log"
    print(f"\n  {dag_id}, logical date {when:%Y-%m-%d %H:%M}Z  (whole log: {log})", flush=True)
    progress = DagProgress(describe_snapshot)
    started = time.perf_counter()
    with log.open("w") as out:
        process = subprocess.Popen(
            [str(BIN / "airflow"), "dags", "test", dag_id, when.isoformat()],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            bufsize=1,
        )
        seen_success = False
        try:
            for line in process.stdout:
                out.write(line)
                seen_success = seen_success or "state=success" in line
                for shown in progress.feed(line):
                    print(shown, flush=True)
        except BaseException:  # Ctrl-C: stop the DAG too
            process.terminate()
            raise
        code = process.wait()
    succeeded = code == 0 and seen_success and not progress.failed_tasks
    print(f"  {dag_id}: {'success' if succeeded else 'FAILED'} in {time.perf_counter() - started:.0f} s", flush=True)
    if not succeeded:
        print("\n".join(log.read_text(errors="replace").splitlines()[-60:]))
        raise SystemExit(f"{dag_id} failed; the whole log is in {log}")


def show_answers(cfg, url: str, n_users: int, k: int) -> tuple[str, str]:
    """A few users' top stories, each story described, beside what the user engaged with.

    Returns (the first user asked about, that user's top story), for the next steps.
    """
    import pyarrow.compute as pc

    from serving.client import RetrievalClient
    from serving.text import format_versions
    from warehouse import Warehouse

    warehouse = Warehouse.from_config(cfg)
    users = warehouse.read_table("users").to_pylist()
    stories = {
        s["story_id"]: s
        for s in warehouse.read_table(
            "stories", ["story_id", "creator_id", "language", "country", "hashtags"]
        ).to_pylist()
    }
    last_day = warehouse.event_days()[-1]
    events = warehouse.read_events(
        start=last_day - timedelta(days=6), columns=["user_id", "story_id", "long_view", "favorite", "share"]
    )
    engaged = events.filter(pc.or_(pc.or_(events["long_view"], events["favorite"]), events["share"]))
    step = max(len(users) // n_users, 1)
    first: tuple[str, str] | None = None
    with RetrievalClient(url, token=cfg.serving.token) as client:
        for user in users[::step][:n_users]:
            mine = engaged.filter(pc.equal(engaged["user_id"], user["user_id"]))["story_id"].to_pylist()
            tags = Counter(t for sid in mine for t in stories[sid]["hashtags"])
            print(
                f"\nuser {user['user_id']} ({user['country']}, speaks {user['language']}); "
                f"engaged last week with {len(mine)} stories, mostly {', '.join(t for t, _ in tags.most_common(5)) or '-'}"
            )
            answer = client.retrieve("stories", user_id=user["user_id"], k=k)
            for rank, hit in enumerate(answer["items"], 1):
                story = stories.get(hit["id"], {})
                print(
                    f"  {rank:>2}. {hit['id']:<12} {hit['score']:7.4f}  {story.get('language', '?')}/{story.get('country', '?')}  "
                    f"by {story.get('creator_id', '?'):<10} {' '.join(story.get('hashtags') or [])}"
                )
            if first is None and answer["items"] and mine:  # a user with a history, for the next steps
                first = (user["user_id"], answer["items"][0]["id"])
            print(f"      {served_line(answer)}")
        print("\nversions served:")
        print(format_versions(client.versions()))
    return first or (users[0]["user_id"], next(iter(stories)))


def serve_and_query(cfg, tier: RetrievalTier, n_users: int, k: int) -> tuple[str, str]:
    """Starts `tier`, shows a few users' answers through it (`show_answers`), stops it.

    Every process of the tier is stopped however this ends (answers shown, a failure,
    Ctrl-C). Returns what `show_answers` returns.
    """
    try:
        with tier:
            print(tier.describe(), flush=True)
            return show_answers(cfg, tier.url, n_users, k)
    finally:
        print(f"\nstopped {tier.title} (logs: {', '.join(str(p.log) for p in tier.processes)})", flush=True)


def served_line(answer: dict) -> str:
    """Where an answer came from: the index and user embeddings, and through a router its
    coverage and which replica answered for each shard."""
    served = answer["served"]
    line = f"served from index {served['index_version']}, user embeddings {served['user_embeddings_version']}"
    if "coverage" not in answer:  # the single service
        return line
    shards = answer.get("shards") or []
    missing = answer.get("missing_shards") or []
    where = ", ".join(f"shard {s['shard']} by {s['replica']}" for s in shards)
    gaps = f"; shards {missing} did not answer" if missing else ""
    return (
        f"{line}; coverage {answer['coverage']:g} ({len(shards)} of {len(shards) + len(missing)} shards: {where}{gaps})"
    )


def next_steps(
    root: str, user_id: str, story_id: str, port: int = 8090, shards: int = 1, router_port: int = 8091
) -> str:
    """What to do after the demo, as commands to paste, every one of them on `root`."""
    default_root = root == f"file://{REPO_DIR}/var/demo"
    ebr = f".venv/bin/ebr --root {root}"
    airflow = "make airflow" if default_root else f"make airflow DEMO_ROOT={root}"
    if shards > 1:
        url = f"http://127.0.0.1:{router_port}"
        serve = f"""  serve it ({shards} shard servers and the router over them), and query the router from a second shell:
{tier_commands(root, shards, router_port)}
    .venv/bin/ebr query --url {url} user {user_id} -k 10     # the answer's coverage says how many shards answered
    .venv/bin/ebr query --url {url} similar stories {story_id}
    .venv/bin/ebr query --url {url} versions                # the pinned shard sets, the replicas' health"""
    else:
        serve = f"""  serve it, and query it from a second shell:
    {ebr} serve    # http://127.0.0.1:{port}, OpenAPI at /docs; Ctrl-C stops it
    .venv/bin/ebr query user {user_id} -k 10
    .venv/bin/ebr query similar stories {story_id}
    .venv/bin/ebr query versions"""
    return f"""
Next steps (from {REPO_DIR}; every command works on this demo's root, {root}):

{serve}

  look at what was published, and every move of LATEST:
    {ebr} artifacts list
    {ebr} artifacts history indexes/stories

  the same runs in the Airflow UI (this demo's Airflow home, {demo_airflow_home(root)}; its DAGs use this root):
    {airflow}    # http://127.0.0.1:8080 (AIRFLOW_PORT=8081 make airflow for another port); it prints the login

  roll the story index back to the one before (a running service or router swaps within its poll interval):
    {ebr} index rollback --collection stories --to previous --reason "trying a rollback"
    or in Airflow: DAG ebr_rollback, Trigger, version "previous", a reason (keep "unpause on trigger": it has no schedule)
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default=f"file://{REPO_DIR}/var/demo", help="artifact root (file:///abs or gs://...)")
    parser.add_argument("--size", default="small", choices=sorted(WORLD_SIZES), help="synthetic world preset")
    parser.add_argument("--users", type=int, default=3, help="users to query")
    parser.add_argument("-k", type=int, default=8, help="stories per user")
    parser.add_argument(
        "--shards",
        type=positive_int,
        default=1,
        help="index.shards: with 2 or more, publish shard sets and query them through `ebr route` over "
        "one `ebr serve --shard I/S` per shard (default 1: one `ebr serve`)",
    )
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)  # `kill <demo>` stops what it started, as Ctrl-C does

    began = time.perf_counter()
    airflow_home = demo_airflow_home(args.root)
    shutil.rmtree(airflow_home, ignore_errors=True)
    (airflow_home / "logs").mkdir(parents=True)
    env = demo_environment(args.root, airflow_home, args.size, args.shards)
    (airflow_home / SETTINGS_FILE).write_text(
        json.dumps(demo_settings(args.root, airflow_home, args.size, args.shards), indent=1)
    )

    shards = f", every index in {args.shards} shards" if args.shards > 1 else ""
    print(f"1. a fresh synthetic world ({args.size}) at {args.root}{shards}", flush=True)
    subprocess.run(
        [str(BIN / "ebr"), "data", "generate", "--size", args.size, "--overwrite", "--no-progress"], env=env, check=True
    )
    from artifacts import MODELS, ArtifactStore
    from config import load_config

    cfg = load_config(environ=env)
    store = ArtifactStore.from_config(cfg)
    start = datetime(cfg.world.start_date.year, cfg.world.start_date.month, cfg.world.start_date.day, tzinfo=UTC)

    print(f"\n2. the pipeline through Airflow (airflow dags test; AIRFLOW_HOME {airflow_home}, SQLite)", flush=True)
    if run_logged([str(BIN / "airflow"), "db", "migrate"], env, airflow_home / "logs" / "db-migrate.log"):
        raise SystemExit(f"airflow db migrate failed; see {airflow_home / 'logs' / 'db-migrate.log'}")
    for dag_id, when in demo_runs(start, cfg.world.count("days")):
        run_dag(dag_id, when, env, airflow_home / "logs", lambda kind, snapshot: snapshot_counts(store, kind, snapshot))
        if dag_id == "ebr_train" and store.kind(MODELS).latest() is None:
            raise SystemExit(
                "the gate refused the model (its line is above), and no earlier model is published: "
                "nothing to embed with. `make bench` and the README's Model section say how to train longer."
            )
    print(flush=True)
    subprocess.run([str(BIN / "ebr"), "artifacts", "list"], env=env, check=True)

    tier = RetrievalTier(env, airflow_home / "logs", args.shards)
    print(f"\n3. {tier.title} on 127.0.0.1", flush=True)
    user_id, story_id = serve_and_query(cfg, tier, args.users, args.k)
    print(f"demo done in {time.perf_counter() - began:.0f} s")
    print(next_steps(args.root, user_id, story_id, cfg.serving.port, args.shards, cfg.router.port), flush=True)
    return 0


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {value}")
    return value


def _exit_on_sigterm(signum, frame) -> None:
    raise SystemExit(128 + signum)


if __name__ == "__main__":
    sys.exit(main())
