"""Embedding dataflow throughput against the same work without Beam, side by side in one run.

    python benchmarks/embedding_jobs.py [--stories 200000] [--users 30000] [--events 2000000]
                                        [--repeats 3] [--million [--million-only]] [--keep DIR]
                                        [--profile FILE] [--dask 4,8,16,32 [--dask-only]] [--out FILE]

The target (issue 15 item 4): at 1,000,000 stories the story job on DirectRunner takes
at most twice as long as the same work without Beam. That baseline, the "no-Beam
loop", runs in one process: read the Parquet tables, build the as-of features with
`models.features`, call the tower in batches of `embed.batch_size`, and write the
snapshot shards as the job does (a row's shard from its id, sorted by id; for stories
the creators' mean vectors too). The job is `run()` from call to return: pipeline
construction, Parquet reads, validation, the per-bucket join, features, the tower,
shard writes and the manifest. Runs are interleaved (loop, job, loop, job, ...) and
medians reported, with their ratio and the 1-minute load average before each repeat.

On the smaller world (default 200,000 stories), for each job (stories, users), also the
tower alone (the SavedModel over features built beforehand, untimed) and one run in
DirectRunner's multi-process mode (2 workers). --million adds the 1,000,000-story world
(the story job against the no-Beam loop); with --million-only the smaller world is
skipped, and --profile and --dask run on the 1,000,000-story world.
With --dask, the story job on a 2-worker local dask.distributed cluster
(`beam_jobs.dask_runner`) against DirectRunner at each given `embed.buckets`: wall time of
each and whether the two snapshots are equal.
With --keep DIR, the model and worlds are built in DIR and reused by later runs.

Every story of the synthetic world is eligible (the story job's max age is set 30 days
past the world's span, which covers the stories posted before its first day), so the
story job embeds exactly `--stories`.
With --profile, one more story job runs under cProfile; the stats file is written and
the JSON gets where the job's time went (Beam's own work against ours).

The towers come from a model with the default architecture trained for one epoch on a
tiny world: throughput does not depend on what the weights learnt (ids the tiny
vocabulary lacks share the out-of-vocabulary row, at the same cost).

One script of about 600 lines: the job, the same work written without Beam (which must
stay step for step what the job does, so it sits beside it) and the Dask runs share the
worlds, the model and the tables they print.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

REPO = Path(__file__).resolve().parents[1]


def run(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stories", type=int, default=200_000)
    parser.add_argument("--users", type=int, default=30_000)
    parser.add_argument("--creators", type=int, default=5_000)
    parser.add_argument("--events", type=int, default=2_000_000)
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--million",
        action="store_true",
        help="also run the story job at 1,000,000 stories against the same work without Beam (interleaved repeats)",
    )
    parser.add_argument(
        "--million-only",
        action="store_true",
        help="with --million: skip the smaller world; --profile and --dask then run on the 1,000,000-story world",
    )
    parser.add_argument(
        "--keep",
        type=Path,
        help="build the benchmark model and worlds in this folder and reuse them on later runs "
        "(default: a temporary folder, removed after the run)",
    )
    parser.add_argument("--profile", type=Path, help="also profile one story job; write its pstats here")
    parser.add_argument(
        "--dask",
        metavar="BUCKETS",
        help="also run the story job on a local dask.distributed cluster (2 workers) at each "
        "embed.buckets of this comma-separated list, against DirectRunner at the same buckets",
    )
    parser.add_argument(
        "--dask-only",
        action="store_true",
        help="with --dask: skip the comparisons against the tower and the no-Beam loop",
    )
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "embedding_jobs.json")
    args = parser.parse_args(argv)

    if args.million_only and not args.million:
        parser.error("--million-only needs --million")
    load_at_start = os.getloadavg()
    rows = []
    dask_rows, profile = [], None
    with _workdir(args.keep) as tmp:
        model_root = _cached(tmp / "model-world", _train_small_model)
        if not args.million_only:
            world = _world(tmp / "world", model_root, args.stories, args.users, args.creators, args.events, args.days)
            for entity in () if args.dask_only else ("stories", "users"):
                rows.append(_compare(world, entity, args.days, args.repeats))
        if args.million:
            big = _world(tmp / "world-1m", model_root, 1_000_000, args.users, 20_000, 3_000_000, args.days)
            if not (args.million_only and args.dask_only):
                rows.append(_against_plain_loop(big, "stories", args.days, args.repeats))
        measured = big if args.million_only else world
        if args.dask:
            dask_rows = _on_dask(measured, args.days, [int(b) for b in args.dask.split(",")])
        if args.profile:
            profile = _profile(measured, "stories", args.days, args.profile)

    report = {
        "benchmark": "embedding_jobs",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "command": "python benchmarks/embedding_jobs.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "load_average_at_start": [round(x, 2) for x in load_at_start],
        "target": "story job at 1,000,000 stories on DirectRunner >= 0.5 x the same work without Beam "
        "(read, features, tower, write; issue 15 item 4)",
        "rows": rows,
        **({"dask": dask_rows} if dask_rows else {}),
        **({"story_job_profile": profile} if profile else {}),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    args.out.with_suffix(".md").write_text(
        markdown(rows)
        + ("\n\n" + profile_markdown(profile) if profile else "")
        + ("\n\n" + dask_markdown(dask_rows) if dask_rows else "")
        + "\n"
    )
    print(markdown(rows))
    if dask_rows:
        print("\n" + dask_markdown(dask_rows))
    if profile:
        print("\n" + profile_markdown(profile))
    print(f"\nwritten to {args.out}")
    return report


@contextlib.contextmanager
def _workdir(keep: Path | None):
    """The folder the model and worlds are built in: `keep` (made if missing), or a temporary one."""
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        yield keep.resolve()
        return
    with tempfile.TemporaryDirectory(prefix="ebr-bench-embed-") as tmp:
        yield Path(tmp)


def _cached(root: Path, build, *args) -> Path:
    """`build(root, *args)` unless `root` holds what an earlier run built with the same arguments."""
    marker = root / ".bench-built.json"
    key = json.dumps([build.__name__, *map(str, args)])
    if marker.exists() and marker.read_text() == key:
        print(f"reusing {root}", flush=True)
        return root
    shutil.rmtree(root, ignore_errors=True)
    build(root, *args)
    marker.write_text(key)
    return root


def _train_small_model(root: Path) -> Path:
    from artifacts import ArtifactStore
    from config import load_config
    from models.pipeline import train_and_publish
    from models.publish import publish_model
    from warehouse import Warehouse
    from warehouse.synthetic import generate_world

    cfg = load_config(
        overrides=[
            f"root=file://{root}",
            "world.size=tiny",
            "train.epochs=1",
            "train.eval_ks=[10,100]",
            "train.holdout_days=2",
            "train.tune_baselines=false",
        ],
        environ={},
    )
    generate_world(cfg.world, Warehouse.from_config(cfg), progress=False)
    # The towers' throughput is measured, not their quality: a 1-epoch model is published
    # whatever the promotion gate would say of it.
    version = "20260101T000000Z-bench"
    outcome = train_and_publish(cfg, root.parent / "train-work", version, publish=False, verbose=0)
    published = publish_model(
        ArtifactStore.from_config(cfg),
        outcome.export_dir,
        version,
        parents={},
        params={},
        metrics=outcome.result.metrics,
        reason="embedding-job benchmark model",
    )
    if not published.moved:
        raise SystemExit(f"the benchmark model was not published: {published}")
    return root


def _world(root: Path, model_root: Path, stories: int, users: int, creators: int, events: int, days: int) -> Path:
    return _cached(root, _generate_world, model_root, stories, users, creators, events, days)


def _generate_world(
    root: Path, model_root: Path, stories: int, users: int, creators: int, events: int, days: int
) -> Path:
    from config import load_config
    from warehouse import Warehouse
    from warehouse.synthetic import generate_world

    overrides = [
        f"root=file://{root}",
        f"world.n_stories={stories}",
        f"world.n_users={users}",
        f"world.n_creators={creators}",
        f"world.n_events={events}",
        f"world.days={days}",
    ]
    cfg = load_config(overrides=overrides, environ={})
    started = time.perf_counter()
    generate_world(cfg.world, Warehouse.from_config(cfg), progress=False)
    print(
        f"world {stories:,} stories, {users:,} users, {events:,} events: {time.perf_counter() - started:.0f} s",
        flush=True,
    )
    shutil.copytree(model_root / "models", root / "models")
    return root


# Snapshot names carry the run's start time: with --keep, a later run on the same world
# must not find an earlier run's snapshot complete (the job would then only publish).
_RUN = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")


def _snapshot(name: str) -> str:
    return f"{name}-{_RUN}"


def _job_argv(root: Path, entity: str, days: int, snapshot: str, extra: tuple[str, ...] = ()) -> list[str]:
    argv = [f"--root=file://{root}", f"--snapshot={_snapshot(snapshot)}", "--no_publish", *extra]
    return argv + ([f"--story_max_age_days={days + 30}"] if entity == "stories" else [])


def _run_job(root: Path, entity: str, days: int, snapshot: str, extra: tuple[str, ...] = ()) -> tuple[float, int]:
    from beam_jobs import story_embeddings, user_embeddings

    job = story_embeddings if entity == "stories" else user_embeddings
    started = time.perf_counter()
    outcomes = job.run(_job_argv(root, entity, days, snapshot, extra))
    return time.perf_counter() - started, outcomes[0].count


def _raw_tower(root: Path, entity: str, days: int):
    """(runner, features, ids) for the rows the job embeds, features built untimed."""
    import numpy as np

    from artifacts import MODELS, ArtifactStore
    from config import FeatureConfig
    from models.features import Catalog, EventHistory, story_features, user_features
    from models.tower_runner import TowerRunner
    from warehouse import Warehouse
    from warehouse.tables import day_start_ts

    store = ArtifactStore.open(f"file://{root}")
    models = store.kind(MODELS)
    model_version = models.latest()
    meta = json.loads(models.read_file(model_version, "features.json"))
    fcfg = FeatureConfig.model_validate(meta["features"])
    warehouse = Warehouse.open(f"file://{root}")
    as_of = day_start_ts(warehouse.event_days()[-1]) + 86_400
    catalog = Catalog.from_tables(
        warehouse.read_table("users"), warehouse.read_table("stories"), warehouse.read_table("creators"), fcfg
    )
    history = EventHistory.from_events(warehouse.read_events(), catalog, fcfg)
    if entity == "stories":
        rows = np.flatnonzero(catalog.story_created_ts < as_of)
        features, tower = story_features(history, rows, np.full(len(rows), as_of)), "story_tower"
    else:
        rows = np.arange(len(catalog.user_ids))
        features, tower = user_features(history, rows, np.full(len(rows), as_of)), "user_tower"
    # The tower loaded in place, from the folder the manifest names (as the jobs load it).
    return TowerRunner(models.local_dir(model_version) / tower), features, len(rows)


def _plain_loop(root: Path, entity: str, runner, batch: int, out: Path | None = None) -> tuple[float, int]:
    """(seconds, rows) of the job's work without Beam, in one loop: read, features, tower,
    and (with `out`) the snapshot shards written as the job writes them (stories: and the
    creators' mean vectors), into `out`."""
    import numpy as np

    from config import FeatureConfig, load_config
    from models.features import Catalog, EventHistory, story_features, user_features
    from warehouse import Warehouse
    from warehouse.tables import day_start_ts

    started = time.perf_counter()
    warehouse = Warehouse.open(f"file://{root}")
    meta = json.loads((runner.path.parent / "features.json").read_text())
    fcfg = FeatureConfig.model_validate(meta["features"])
    as_of = day_start_ts(warehouse.event_days()[-1]) + 86_400
    catalog = Catalog.from_tables(
        warehouse.read_table("users"), warehouse.read_table("stories"), warehouse.read_table("creators"), fcfg
    )
    history = EventHistory.from_tables((t for _, t in warehouse.iter_events()), catalog, fcfg)
    if entity == "stories":
        rows = np.flatnonzero(catalog.story_created_ts < as_of)
        build, ids = story_features, catalog.story_ids
    else:
        rows = np.arange(len(catalog.user_ids))
        build, ids = user_features, catalog.user_ids
    vectors = []
    for start in range(0, len(rows), batch):
        part = rows[start : start + batch]
        vectors.append(runner(build(history, part, np.full(len(part), as_of)), batch_size=batch))
    if out is not None:
        shards = load_config(environ={}).embed.shards
        vectors = np.concatenate(vectors)
        _write_plain_snapshot(out / entity, np.asarray(ids)[rows], vectors, shards)
        if entity == "stories":
            _write_plain_snapshot(out / "creators", *_creator_means(catalog.story_creator[rows], vectors), shards)
    return time.perf_counter() - started, len(rows)


def _write_plain_snapshot(folder: Path, ids, vectors, shards: int) -> None:
    """The snapshot's shards as the job writes them (a row's shard from its id; sorted by id)."""
    import numpy as np

    from artifacts.embedding_snapshots import shard_name, write_shard
    from beam_jobs.records import key_buckets

    folder.mkdir(parents=True, exist_ok=True)
    ids = np.asarray(ids, dtype=object)
    shard = key_buckets(ids.tolist(), shards)
    for s in range(shards):
        part = np.flatnonzero(shard == s)
        order = part[np.argsort(ids[part].astype(str), kind="stable")]
        (folder / shard_name(s, shards)).write_bytes(write_shard(ids[order], vectors[order]))


def _creator_means(creators, vectors):
    """(creator ids, L2-normalised sums of their story vectors) in float64, as the job
    computes them; grouped by Arrow dictionary codes (sorting 1M id strings costs seconds)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    encoded = pc.dictionary_encode(pa.array(np.asarray(creators, dtype=object), type=pa.string()))
    codes = encoded.indices.to_numpy(zero_copy_only=False)
    order = np.argsort(codes, kind="stable")
    starts = np.flatnonzero(np.r_[True, codes[order][1:] != codes[order][:-1]])
    sums = np.add.reduceat(np.asarray(vectors, dtype=np.float64)[order], starts, axis=0)
    keys = np.asarray(encoded.dictionary.to_pylist(), dtype=object)[codes[order][starts]]
    norms = np.linalg.norm(sums, axis=1, keepdims=True)
    return keys, np.divide(sums, norms, out=np.zeros_like(sums), where=norms > 0).astype(np.float32)


def _compare(root: Path, entity: str, days: int, repeats: int) -> dict:
    from config import load_config

    batch = load_config(environ={}).embed.batch_size
    runner, features, n = _raw_tower(root, entity, days)
    runner({k: v[:batch] for k, v in features.items()}, batch_size=batch)  # trace once, untimed
    raw, plain, job = [], [], []
    for i in range(repeats):
        started = time.perf_counter()
        runner(features, batch_size=batch)
        raw.append(n / (time.perf_counter() - started))
        with tempfile.TemporaryDirectory(prefix="ebr-bench-plain-") as out:
            seconds, count = _plain_loop(root, entity, runner, batch, Path(out))
        plain.append(count / seconds)
        seconds, count = _run_job(root, entity, days, f"bench-{entity}-{i}")
        if count != n:
            raise SystemExit(f"the {entity} job embedded {count} rows, the raw loop {n}: not the same rows")
        job.append(count / seconds)
        print(
            f"{entity} repeat {i + 1}: raw tower {raw[-1]:,.0f}/s, plain loop {plain[-1]:,.0f}/s, job {job[-1]:,.0f}/s ({seconds:.1f} s)",
            flush=True,
        )
    seconds, _ = _run_job(
        root, entity, days, f"bench-{entity}-mp", ("--direct_running_mode=multi_processing", "--direct_num_workers=2")
    )
    return {
        "job": f"{entity}_embeddings",
        "rows": n,
        "batch_size": batch,
        "repeats": repeats,
        "raw_tower_per_s": [round(x, 1) for x in raw],
        "job_per_s": [round(x, 1) for x in job],
        "raw_tower_median_per_s": round(statistics.median(raw), 1),
        "job_median_per_s": round(statistics.median(job), 1),
        "ratio_job_over_raw": round(statistics.median(job) / statistics.median(raw), 3),
        "plain_loop_per_s": [round(x, 1) for x in plain],
        "plain_loop_median_per_s": round(statistics.median(plain), 1),
        "ratio_job_over_plain_loop": round(statistics.median(job) / statistics.median(plain), 3),
        "job_median_seconds": round(n / statistics.median(job), 1),
        "multi_process_2_workers_seconds": round(seconds, 1),
        "multi_process_2_workers_per_s": round(n / seconds, 1),
    }


def _on_dask(root: Path, days: int, buckets: list[int]) -> list[dict]:
    """The story job on DirectRunner and on a 2-worker local Dask cluster at each bucket
    count: wall seconds of each, and whether the snapshots are equal (ids, vectors)."""
    import numpy as np

    from artifacts import STORY_EMBEDDINGS, ArtifactStore
    from artifacts.embedding_snapshots import read_snapshot
    from beam_jobs.dask_cluster import LocalDaskCluster
    from beam_jobs.dask_runner import RUNNER

    kind = ArtifactStore.open(f"file://{root}").kind(STORY_EMBEDDINGS)
    out = []
    with LocalDaskCluster(workers=2, threads=1) as cluster:
        _run_job(
            root,
            "stories",
            days,
            "bench-dask-warmup",
            (f"--runner={RUNNER}", f"--dask_client_address={cluster.address}", "--set=embed.buckets=2"),
        )
        for n in buckets:
            flags = (f"--set=embed.buckets={n}",)
            direct_s, count = _run_job(root, "stories", days, f"bench-direct-{n}", flags)
            dask_s, dask_count = _run_job(
                root,
                "stories",
                days,
                f"bench-dask-{n}",
                (*flags, f"--runner={RUNNER}", f"--dask_client_address={cluster.address}"),
            )
            a, b = (
                read_snapshot(kind, _snapshot(f"bench-direct-{n}")),
                read_snapshot(kind, _snapshot(f"bench-dask-{n}")),
            )
            ia, ib = np.argsort(a.ids), np.argsort(b.ids)
            same_ids = list(a.ids[ia]) == list(b.ids[ib])
            max_diff = float(np.abs(a.vectors[ia] - b.vectors[ib]).max()) if same_ids else None
            print(
                f"stories at {n} buckets: DirectRunner {direct_s:.1f} s, Dask {dask_s:.1f} s, same ids {same_ids}, max |diff| {max_diff}",
                flush=True,
            )
            out.append(
                {
                    "job": "story_embeddings",
                    "rows": count,
                    "buckets": n,
                    "direct_seconds": round(direct_s, 1),
                    "dask_seconds": round(dask_s, 1),
                    "dask_rows": dask_count,
                    "same_ids": same_ids,
                    "max_abs_diff": max_diff,
                    "dask_seconds_per_1m_rows": round(dask_s / count * 1e6, 1),
                    "direct_seconds_per_1m_rows": round(direct_s / count * 1e6, 1),
                }
            )
    return out


def dask_markdown(rows: list[dict]) -> str:
    lines = [
        "| job | rows | embed.buckets | DirectRunner s | Dask (2 workers) s | same ids | max abs diff |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['job']} | {r['rows']:,} | {r['buckets']} | {r['direct_seconds']} | {r['dask_seconds']} | {r['same_ids']} | {r['max_abs_diff']} |"
        for r in rows
    ]
    return "\n".join(lines)


def _against_plain_loop(root: Path, entity: str, days: int, repeats: int) -> dict:
    """The job against the same work without Beam (read, features, tower, write), interleaved."""
    from config import load_config

    batch = load_config(environ={}).embed.batch_size
    runner, features, n = _raw_tower(root, entity, days)
    runner({k: v[:batch] for k, v in features.items()}, batch_size=batch)  # trace once, untimed
    del features
    plain, job, loads = [], [], []
    for i in range(repeats):
        loads.append(round(os.getloadavg()[0], 2))
        with tempfile.TemporaryDirectory(prefix="ebr-bench-plain-") as out:
            seconds, count = _plain_loop(root, entity, runner, batch, Path(out))
        plain.append(seconds)
        job_seconds, job_count = _run_job(root, entity, days, f"bench-{entity}-big-{i}")
        if job_count != count:
            raise SystemExit(f"the {entity} job embedded {job_count} rows, the plain loop {count}: not the same rows")
        job.append(job_seconds)
        print(
            f"{entity} at {count:,} rows, repeat {i + 1}: no-Beam loop {seconds:.1f} s, job {job_seconds:.1f} s "
            f"(ratio {seconds / job_seconds:.2f}; load {loads[-1]})",
            flush=True,
        )
    plain_s, job_s = statistics.median(plain), statistics.median(job)
    return {
        "job": f"{entity}_embeddings",
        "rows": n,
        "input_bytes": _input_bytes(root),
        "batch_size": batch,
        "repeats": repeats,
        "plain_loop_seconds_each": [round(x, 1) for x in plain],
        "job_seconds_each": [round(x, 1) for x in job],
        "load_average_1m_before_each_repeat": loads,
        "plain_loop_median_per_s": round(n / plain_s, 1),
        "job_median_per_s": round(n / job_s, 1),
        "job_per_s": round(n / job_s, 1),
        "job_median_seconds": round(job_s, 1),
        "job_seconds": round(job_s, 1),
        "plain_loop_median_seconds": round(plain_s, 1),
        "ratio_job_over_plain_loop": round(plain_s / job_s, 3),
        "job_seconds_per_1m_rows": round(job_s / n * 1e6, 1),
    }


def _input_bytes(root: Path) -> dict[str, int]:
    """Bytes of the warehouse tables the story job reads."""
    return {
        table: sum(f.stat().st_size for f in (root / "warehouse" / table).rglob("*.parquet"))
        for table in ("stories", "creators", "events")
    }


# Where a job's time goes: (label, file suffix, function name); the cumulative time of the
# matching profile entry (the largest, if several match). Names of Beam 2.77's internals.
_PROFILE_PARTS = (
    ("pipeline construction (our build_pipeline)", "beam_jobs/story_embeddings.py", "build_pipeline"),
    ("translation to the runner API (Beam)", "apache_beam/pipeline.py", "to_runner_api"),
    (
        "stage setup (Beam bundle processors, incl. loading the SavedModel in setup())",
        "apache_beam/runners/worker/bundle_processor.py",
        "__init__",
    ),
    ("feeding encoded elements to stages (Beam data plane)", "fn_api_runner/fn_runner.py", "_send_input_to_worker"),
    ("collecting stage outputs (Beam data plane)", "apache_beam/runners/worker/data_plane.py", "close"),
    ("reading + validating rows (ours)", "beam_jobs/transforms.py", "process@_ValidateAndBucket"),
    ("features per bucket (models.features)", "beam_jobs/story_embeddings.py", "process"),
    ("tower calls (TensorFlow)", "models/tower_runner.py", "__call__"),
    ("shard writes (ours)", "beam_jobs/transforms.py", "process@_WriteShard"),
)


def _profile(root: Path, entity: str, days: int, path: Path) -> dict:
    """Runs the job once under cProfile; returns {total, parts: {label: seconds}}."""
    import cProfile
    import inspect
    import pstats

    from beam_jobs import transforms

    lines = {  # DoFns that share a file: tell their `process` apart by line number
        f"process@{cls.__name__}": inspect.getsourcelines(cls.process)[1]
        for cls in (transforms._ValidateAndBucket, transforms._WriteShard)
    }
    profiler = cProfile.Profile()
    profiler.enable()
    seconds, count = _run_job(root, entity, days, f"bench-{entity}-profiled")
    profiler.disable()
    path.parent.mkdir(parents=True, exist_ok=True)
    profiler.dump_stats(path)
    stats = pstats.Stats(str(path)).stats
    parts = {}
    for label, suffix, function in _PROFILE_PARTS:
        name, line = (function.split("@")[0], lines[function]) if "@" in function else (function, None)
        matches = [
            cum
            for (file, ln, fn), (_, _, _, cum, _) in stats.items()
            if file.endswith(suffix) and fn == name and (line is None or ln == line)
        ]
        parts[label] = round(max(matches), 2) if matches else None
    return {
        "job": f"{entity}_embeddings",
        "rows": count,
        "seconds_under_profiler": round(seconds, 2),
        "parts_seconds": parts,
        "pstats": str(path),
        "note": "cumulative seconds; parts can nest (a stage's user code runs inside Beam's bundle processing)",
    }


def profile_markdown(profile: dict) -> str:
    lines = [
        f"Where the {profile['job']} job's {profile['seconds_under_profiler']} s went ({profile['rows']:,} rows, under cProfile):",
        "",
        "| part | seconds |",
        "|---|---|",
    ]
    lines += [
        f"| {label} | {seconds if seconds is not None else 'not found'} |"
        for label, seconds in profile["parts_seconds"].items()
    ]
    return "\n".join(lines)


def markdown(rows: list[dict]) -> str:
    lines = [
        "| job | rows | raw tower /s | no-Beam loop /s (read + features + tower + write) | job /s | job / raw tower | job / plain loop | job wall s | multi-process (2 workers) s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "ratio_job_over_raw" in r:
            lines.append(
                f"| {r['job']} | {r['rows']:,} | {r['raw_tower_median_per_s']:,.0f} | {r['plain_loop_median_per_s']:,.0f} | {r['job_median_per_s']:,.0f} "
                f"| {r['ratio_job_over_raw']:.2f} | {r['ratio_job_over_plain_loop']:.2f} | {r['job_median_seconds']} | {r['multi_process_2_workers_seconds']} |"
            )
        else:
            lines.append(
                f"| {r['job']} | {r['rows']:,} |  | {r['plain_loop_median_per_s']:,.0f} | {r['job_median_per_s']:,.0f} "
                f"|  | {r['ratio_job_over_plain_loop']:.2f} | {r['job_median_seconds']} |  |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    run()
