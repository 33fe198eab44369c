"""Beam on dask.distributed (`beam_jobs.dask_runner`), against a real local cluster.

A module fixture starts a scheduler and 2 worker processes on 127.0.0.1 (as `make dask`
does) and stops them. Each fix of the runner has a test that runs on this project's
runner and on Beam's shipped one, where it is `xfail(strict=True)`: the day Beam fixes
the bug, that test passes there, fails as XPASS, and the fix can be dropped. The DoFns
record what they did in files under tmp_path (the workers are other processes).
Then both jobs run on the cluster and must write what DirectRunner writes.
"""

import json
import os
import time
from pathlib import Path

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.metrics import Metrics
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.pvalue import AsList, TaggedOutput
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.windowed_value import WindowedValue

from artifacts import CREATOR_EMBEDDINGS, STORY_EMBEDDINGS, USER_EMBEDDINGS, ArtifactStore
from artifacts.embedding_snapshots import read_snapshot
from beam_jobs import story_embeddings, user_embeddings
from beam_jobs.dask_cluster import LocalDaskCluster
from beam_jobs.dask_runner import RUNNER, RUNS_KEPT
from beam_jobs.plan import job_config, resolve_plan, with_configured_runner
from config import ConfigError, load_config
from models.pipeline import train_and_publish
from tests.test_beam_jobs import SMALL_MODEL, _job_args, damaged_world  # noqa: F401 (a fixture, on this module's world)
from warehouse import Warehouse
from warehouse.synthetic import generate_world

SHIPPED = "apache_beam.runners.dask.dask_runner.DaskRunner"
README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.fixture(scope="module")
def cluster():
    with LocalDaskCluster(workers=2, threads=1) as running:
        yield running.address


def on_both_runners(shipped_bug: str):
    """Runs the test on this project's runner, and on Beam's shipped one expecting `shipped_bug`."""
    return pytest.mark.parametrize(
        "runner",
        [
            RUNNER,
            pytest.param(
                SHIPPED, marks=pytest.mark.xfail(strict=True, reason=f"Beam 2.77's DaskRunner: {shipped_bug}")
            ),
        ],
    )


def _pipeline(runner: str, address: str, npartitions: int = 4) -> beam.Pipeline:
    return beam.Pipeline(
        options=PipelineOptions(
            [f"--runner={runner}", f"--dask_client_address={address}", f"--dask_npartitions={npartitions}"]
        )
    )


def _run(pipeline: beam.Pipeline):
    result = pipeline.run()
    try:
        result.wait_until_finish()
    finally:
        if result.client.status not in ("closed", "closing"):
            result.client.close()  # the shipped runner leaves its client open
    return result


def _record(value, path: str):
    with open(path, "a") as f:  # one short append per call: atomic between processes
        f.write(json.dumps(value) + "\n")
    return value


def _recorded(path) -> list:
    return [json.loads(line) for line in open(path)] if os.path.exists(path) else []


# -- the fixes, one test each ---------------------------------------------------------------


@on_both_runners("only the last sink of the pipeline runs")
def test_every_sink_runs(cluster, tmp_path, runner):
    p = _pipeline(runner, cluster)
    numbers = p | beam.Create(range(6))
    _ = (
        numbers
        | "Doubles" >> beam.Map(lambda x: x * 2)
        | "WriteDoubles" >> beam.Map(_record, str(tmp_path / "doubles"))
    )
    _ = (
        numbers
        | "Squares" >> beam.Map(lambda x: x * x)
        | "WriteSquares" >> beam.Map(_record, str(tmp_path / "squares"))
    )
    _run(p)
    assert sorted(_recorded(tmp_path / "doubles")) == [0, 2, 4, 6, 8, 10]
    assert sorted(_recorded(tmp_path / "squares")) == [0, 1, 4, 9, 16, 25]


class _SplitOdd(beam.DoFn):
    def process(self, x):
        yield TaggedOutput("odd", x) if x % 2 else x


@on_both_runners("a multi-output ParDo's outputs are one bag, the tags dropped")
def test_tagged_outputs_are_separated(cluster, tmp_path, runner):
    p = _pipeline(runner, cluster)
    split = p | beam.Create(range(6)) | beam.ParDo(_SplitOdd()).with_outputs("odd", main="even")
    _ = split.even | "WriteEven" >> beam.Map(_record, str(tmp_path / "even"))
    _run(p)
    assert sorted(_recorded(tmp_path / "even")) == [0, 2, 4]


class _StampBundles(beam.DoFn):
    """Records when each bundle starts (time.time(): one clock for every local process)."""

    def __init__(self, path):
        self.path = path

    def start_bundle(self):
        _record(time.time(), self.path)

    def process(self, x, side):
        yield x + sum(side)


def _stamp_side(x, path: str):
    _record([x, time.time()], path)
    return x


@on_both_runners("a side input is computed inside each task that reads it: its upstream again, unless tasks overlap")
def test_a_side_input_is_computed_once_before_the_tasks_that_read_it(cluster, tmp_path, runner):
    p = _pipeline(runner, cluster, npartitions=4)
    side = p | "Side" >> beam.Create([1, 2, 3]) | "ComputeSide" >> beam.Map(_stamp_side, str(tmp_path / "side_calls"))
    main = (
        p
        | "Main" >> beam.Create(range(8))
        | "AddSide" >> beam.ParDo(_StampBundles(str(tmp_path / "bundles")), AsList(side))
    )
    _ = main | "Write" >> beam.Map(_record, str(tmp_path / "out"))
    _run(p)
    assert sorted(_recorded(tmp_path / "out")) == [x + 6 for x in range(8)]
    calls, bundles = _recorded(tmp_path / "side_calls"), _recorded(tmp_path / "bundles")
    assert sorted(x for x, _ in calls) == [1, 2, 3] and len(bundles) == 4  # computed once, read by 4 tasks
    assert max(t for _, t in calls) < min(bundles)  # a dependency of those tasks, not a computation inside them


class _Counted(beam.DoFn):
    def __init__(self):
        self.seen = Metrics.counter("test", "seen")
        self.sizes = Metrics.distribution("test", "size")

    def process(self, x):
        self.seen.inc()
        self.sizes.update(x)
        yield x


@on_both_runners("result.metrics() raises NotImplementedError")
def test_counters_and_distributions_are_reported(cluster, runner):
    p = _pipeline(runner, cluster, npartitions=3)
    _ = p | beam.Create(range(10)) | "Count" >> beam.ParDo(_Counted())
    metrics = _run(p).metrics().query(MetricsFilter().with_namespace("test"))
    (seen,) = metrics["counters"]
    assert seen.committed == 10 and seen.key.step.startswith("Count")
    (sizes,) = metrics["distributions"]
    assert (sizes.committed.count, sizes.committed.sum, sizes.committed.min, sizes.committed.max) == (10, 45, 0, 9)


class _SetUpOnce(beam.DoFn):
    def __init__(self, path):
        self.path = path

    def setup(self):
        _record(os.getpid(), self.path)

    def process(self, x):
        yield x


@on_both_runners("setup() runs for every partition")
def test_setup_runs_once_per_worker_not_per_bundle(cluster, tmp_path, runner):
    p = _pipeline(runner, cluster, npartitions=8)
    _ = (
        p
        | beam.Create(range(8))
        | "Work" >> beam.ParDo(_SetUpOnce(str(tmp_path / "setups")))
        | "Write" >> beam.Map(_record, str(tmp_path / "out"))
    )
    _run(p)
    assert sorted(_recorded(tmp_path / "out")) == list(range(8))  # 8 bundles
    setups = _recorded(tmp_path / "setups")
    assert 1 <= len(setups) <= 2 and len(set(setups)) == len(setups), setups  # 2 workers of 1 thread


class _TornDown(beam.DoFn):
    def __init__(self, run, path):
        self.run, self.path = run, path

    def process(self, x):
        yield x

    def teardown(self):
        _record(self.run, self.path)


def test_a_long_lived_worker_tears_down_the_dofns_of_old_runs(cluster, tmp_path):
    runs = RUNS_KEPT + 2
    for run in range(runs):
        p = _pipeline(RUNNER, cluster, npartitions=4)  # tasks on both workers
        _ = p | beam.Create([1, 2, 3, 4]) | beam.ParDo(_TornDown(run, str(tmp_path / "teardowns")))
        _run(p)
    # Each worker keeps the newest RUNS_KEPT runs' instances (other tests' runs count too):
    # the first runs' are torn down, the last run's are kept.
    torn = set(_recorded(tmp_path / "teardowns"))
    assert 0 in torn and runs - 1 not in torn, torn


class _CountBundles(beam.DoFn):
    def __init__(self, path):
        self.path = path

    def start_bundle(self):
        _record("bundle", self.path)

    def process(self, kv):
        yield kv


@on_both_runners("a GroupByKey keeps its input's partition count (one per input file here)")
def test_a_group_by_key_shuffles_into_npartitions(cluster, tmp_path, runner):
    p = _pipeline(runner, cluster, npartitions=8)
    grouped = (
        p
        | beam.Create(["file-a", "file-b"])  # two "files" of 32 rows each
        | "Rows" >> beam.FlatMap(lambda f: [(i % 16, f) for i in range(32)])
        | beam.GroupByKey()
        | "PerBucket" >> beam.ParDo(_CountBundles(str(tmp_path / "bundles")))
    )
    _ = grouped | "Write" >> beam.Map(lambda kv: _record([kv[0], len(kv[1])], str(tmp_path / "out")))
    _run(p)
    assert sorted(_recorded(tmp_path / "out")) == [[k, 4] for k in range(16)]
    assert len(_recorded(tmp_path / "bundles")) == 8


class _EmitAtFinish(beam.DoFn):
    def process(self, x):
        yield x

    def finish_bundle(self):
        yield WindowedValue("finished", 0, (GlobalWindow(),))


@on_both_runners("what finish_bundle outputs is dropped")
def test_finish_bundle_outputs_are_kept(cluster, tmp_path, runner):
    p = _pipeline(runner, cluster, npartitions=1)
    _ = p | beam.Create([1, 2]) | beam.ParDo(_EmitAtFinish()) | "Write" >> beam.Map(_record, str(tmp_path / "out"))
    _run(p)
    assert sorted(map(str, _recorded(tmp_path / "out"))) == ["1", "2", "finished"]


# -- configuration ----------------------------------------------------------------------------


def test_the_dask_runner_gets_buckets_as_partitions_and_the_configured_scheduler():
    cfg = load_config(
        overrides=[f"embed.runner={RUNNER}", "embed.buckets=12", "embed.dask_address=tcp://10.0.0.5:8786"], environ={}
    )
    options = with_configured_runner([], cfg).get_all_options()
    assert (options["npartitions"], options["address"]) == (12, "tcp://10.0.0.5:8786")
    # A flag on the command line still wins; other runners get no dask flags.
    assert with_configured_runner(["--dask_npartitions=3"], cfg).get_all_options()["npartitions"] == 3
    direct = load_config(overrides=["embed.buckets=12"], environ={})
    assert with_configured_runner([], direct).get_all_options()["npartitions"] is None


def test_beams_shipped_dask_runner_is_refused_by_name():
    with pytest.raises(ConfigError, match="beam_jobs.dask_runner.DaskRunner"):
        load_config(overrides=["embed.runner=DaskRunner"], environ={})


# -- the jobs on the cluster --------------------------------------------------------------------

# The model only has to run: its evaluation is cut short (no tuned baselines, fewer users
# and resamples), which takes minutes off the fixture on a busy machine.
QUICK_TRAINING = ["train.tune_baselines=false", "train.bootstrap_samples=10", "train.max_eval_users=200"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny synthetic world with a trained, published model (as tests/test_beam_jobs')."""
    root = tmp_path_factory.mktemp("dask-world") / "root"
    cfg = load_config(overrides=[f"root=file://{root}", *SMALL_MODEL, *QUICK_TRAINING], environ={})
    generate_world(cfg.world, Warehouse.from_config(cfg), progress=False)
    outcome = train_and_publish(cfg, root.parent / "work", "20261001T000000Z-train-test", verbose=0)
    assert outcome.published is not None and outcome.published.moved, outcome.gate
    return root


# Each GroupByKey is an all-to-all task shuffle of buckets² small tasks on Dask (and the
# jobs have several): 4 buckets keep these runs short; DirectRunner gets the same.
BUCKETS = "--set=embed.buckets=4"


def _dask_args(cluster: str) -> list[str]:
    return [f"--runner={RUNNER}", f"--dask_client_address={cluster}", "--no_publish", BUCKETS]


@pytest.mark.slow
def test_the_user_job_on_dask_writes_what_direct_runner_writes(world, cluster):
    (direct,) = user_embeddings.run(_job_args(world, "--snapshot=direct", "--no_publish", BUCKETS))
    (dask,) = user_embeddings.run(_job_args(world, "--snapshot=dask", *_dask_args(cluster)))
    kind = ArtifactStore.open(f"file://{world}").kind(USER_EMBEDDINGS)
    _assert_same_snapshot(read_snapshot(kind, "direct"), read_snapshot(kind, "dask"))
    assert dask.count == direct.count == 300
    assert dask.counters and dask.counters == direct.counters  # users_read, users_embedded, ...


@pytest.mark.slow
def test_the_story_job_on_dask_writes_what_direct_runner_writes(world, cluster):
    as_of = "--as_of=2026-10-14T12:00:00Z"
    direct = story_embeddings.run(_job_args(world, as_of, "--snapshot=direct", "--no_publish", BUCKETS))
    dask = story_embeddings.run(_job_args(world, as_of, "--snapshot=dask", *_dask_args(cluster)))
    store = ArtifactStore.open(f"file://{world}")
    for kind_name in (STORY_EMBEDDINGS, CREATOR_EMBEDDINGS):  # both sinks ran
        kind = store.kind(kind_name)
        _assert_same_snapshot(read_snapshot(kind, "direct"), read_snapshot(kind, "dask"))
    assert [o.count for o in dask] == [o.count for o in direct] and dask[0].count > 100
    assert dask[0].counters["stories_embedded"] == dask[0].count and dask[0].counters == direct[0].counters


def _assert_same_snapshot(direct, dask) -> None:
    assert len(dask) == len(direct)
    d, k = np.argsort(direct.ids), np.argsort(dask.ids)
    assert list(dask.ids[k]) == list(direct.ids[d])
    np.testing.assert_allclose(dask.vectors[k], direct.vectors[d], rtol=0, atol=1e-6)
    assert dask.manifest.metrics == direct.manifest.metrics  # counts, rows read, dead letters


@pytest.mark.slow
def test_dead_letters_are_routed_on_dask(damaged_world, cluster):
    root, bad_ids = damaged_world
    (stories, _creators) = story_embeddings.run(
        _job_args(root, "--as_of=2026-10-14T12:00:00Z", "--snapshot=dask-damaged", *_dask_args(cluster))
    )
    kind = ArtifactStore.open(f"file://{root}").kind(STORY_EMBEDDINGS)
    assert kind.manifest("dask-damaged").metrics["dead_letters"] == {"stories": 3}
    letters = [json.loads(line) for line in kind.read_file("dask-damaged", "dead_letter.jsonl").decode().splitlines()]
    assert sorted(d["id"] for d in letters) == sorted(bad_ids)
    assert not set(bad_ids) & set(read_snapshot(kind, "dask-damaged").ids)
    assert stories.counters["stories_dead_letters"] == 3


# -- Dataflow: the documented command line translates, with no network ---------------------------


@pytest.mark.slow
def test_the_readmes_dataflow_command_line_builds_a_dataflow_job(world):
    # The README's "On Dataflow" command, with the root pointed at the local world and
    # --dry_run: Beam translates the job for Dataflow and stops before it would stage
    # files or call the service.
    block = README.read_text().split("**On Dataflow**", 1)[1].split("```sh", 1)[1].split("```", 1)[0]
    words = block.replace("\\\n", " ").split()
    assert words[:3] == ["python", "-m", "beam_jobs.user_embeddings"], words
    flags = [
        w.replace("PROJECT", "my-project").replace("REGION", "europe-west4").replace("BUCKET", "my-bucket")
        for w in words[3:]
    ]
    assert {f.split("=")[0] for f in flags} >= {"--runner", "--project", "--region", "--temp_location", "--setup_file"}
    argv = [*flags, f"--root=file://{world}", *(f"--set={s}" for s in SMALL_MODEL), "--dry_run=True"]
    cfg = job_config(PipelineOptions(argv))
    options = with_configured_runner(argv, cfg)
    plan = resolve_plan(cfg, options, "users", lookback_days=None)
    pipeline = beam.Pipeline(options=options)
    user_embeddings.build_pipeline(pipeline, plan)
    job = pipeline.run().job  # a DataflowRunner dry run: the job, translated, not submitted
    names = {t.unique_name for t in job.proto_pipeline.components.transforms.values()}
    assert {"ReadUsers", "GroupPerUser", "UserTower", "WriteUserSnapshot"} <= names, sorted(names)
    assert plan.cfg.embed.buckets == 512 and job.options.get_all_options()["project"] == "my-project"
