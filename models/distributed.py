"""Training across worker processes with `tf.distribute.MultiWorkerMirroredStrategy`.

`ebr train --workers N` starts N copies of the same command, each with a `TF_CONFIG`
naming the cluster (127.0.0.1 ports here; hosts of a real cluster set their own, see the
README) and its own index. Every worker builds the same config, reads the same
warehouse and runs `models.training.train_and_evaluate` with the strategy:

- the global batch (`train.batch_size`) is split between the workers: each takes its
  slice of the same shuffled global batches (`worker_dataset`), so the union of the
  slices is what one process would train on;
- in-batch negatives span the global batch: each replica all-gathers the others' story
  embeddings (`models.two_tower`), and each replica's loss is its share of the global
  batch's weighted mean, so the summed gradients are the single-process ones;
- logQ comes from the sampling probabilities of the whole training set, the same table
  on every worker;
- validation and early stopping decide on the workers' mean figure, so all stop at the
  same epoch with the same weights;
- worker 0, the chief, evaluates, gates and publishes; the others train and exit.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np

from config.loopback import free_ports

TF_CONFIG = "TF_CONFIG"

log = logging.getLogger(__name__)


def train_command(
    cfg,
    version: str,
    workdir: Path,
    workers: int,
    *,
    run_id: str | None = None,
    publish: bool = True,
    verbose: bool = False,
    wide: bool = False,
) -> list[str]:
    """The `ebr train` command each worker runs: every setting of `cfg` passed as --set
    (so a worker builds exactly this configuration, whatever files and EBR_* variables it
    sees), the version and working folder fixed (their defaults would differ per worker)."""
    import sys

    command = [sys.executable, "-m", "cli.main", "--root", cfg.root]
    for section, values in cfg.model_dump(mode="json", exclude={"root"}).items():
        for key, value in values.items():
            command += ["--set", f"{section}.{key}={json.dumps(value)}"]
    if verbose:
        command.append("-v")
    command += ["train", "--version", version, "--workdir", str(workdir), "--workers", str(workers)]
    if run_id:
        command += ["--run-id", run_id]
    if not publish:
        command.append("--no-publish")
    if wide:
        command.append("--wide")
    return command


def run_workers(command: list[str], workers: int, logdir: Path, *, host: str = "127.0.0.1", poll_s: float = 0.5) -> int:
    """Runs `workers` copies of `command` on `host`, each with its TF_CONFIG, until all end.

    Worker 0 (the chief) writes to this process's stdout and stderr; worker i > 0 to
    `logdir/worker-<i>.log`. When one fails the others are stopped (the survivors would
    wait for it in their next collective). Returns 0 when every worker succeeded, else the
    exit code of the first that failed.
    """
    if workers < 2:
        raise ValueError(f"run_workers needs at least 2 workers, not {workers}")
    logdir.mkdir(parents=True, exist_ok=True)
    ports = free_ports(workers, host)
    processes, logs = [], []
    try:
        for index in range(workers):
            env = {**os.environ, TF_CONFIG: json.dumps(cluster_config(ports, index, host))}
            out = None
            if index:
                out = open(logdir / f"worker-{index}.log", "wb")  # noqa: SIM115 (closed below)
                logs.append(out)
            processes.append(subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT if out else None))
        log.info("started %d workers on %s ports %s; workers 1.. log to %s", workers, host, ports, logdir)
        while True:
            codes = [p.poll() for p in processes]
            failed = [(i, c) for i, c in enumerate(codes) if c not in (None, 0)]
            if failed:
                index, code = failed[0]
                where = "above" if index == 0 else str(logdir / f"worker-{index}.log")
                log.error(
                    "worker %d of %d exited with %d (its log: %s): stopping the others", index, workers, code, where
                )
                return code
            if all(c == 0 for c in codes):
                return 0
            time.sleep(poll_s)
    finally:
        for p in processes:
            if p.poll() is None:
                p.terminate()
        for p in processes:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        for out in logs:
            out.close()


def cluster_config(ports: list[int], index: int, host: str = "127.0.0.1") -> dict[str, Any]:
    """The TF_CONFIG of worker `index` of a cluster of len(ports) workers on `host`."""
    return {"cluster": {"worker": [f"{host}:{port}" for port in ports]}, "task": {"type": "worker", "index": index}}


def worker_role(environ: dict[str, str] | None = None) -> tuple[int, int] | None:
    """(index, workers) from TF_CONFIG when it names a cluster of more than one worker."""
    raw = (os.environ if environ is None else environ).get(TF_CONFIG)
    if not raw:
        return None
    try:
        spec = json.loads(raw)
        workers = len(spec["cluster"]["worker"])
        index = int(spec["task"]["index"])
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"TF_CONFIG is not a worker cluster spec ({e}): {raw[:200]}") from e
    if spec["task"].get("type") != "worker" or not 0 <= index < workers:
        raise ValueError(f"TF_CONFIG task {spec['task']} is not one of the {workers} workers")
    return (index, workers) if workers > 1 else None


def strategy_from_environment():
    """A MultiWorkerMirroredStrategy when TF_CONFIG names a cluster, else None.

    Must run before this process executes any TensorFlow op (the collectives are set up
    when the strategy is created).
    """
    if worker_role() is None:
        return None
    import tensorflow as tf

    # RING: the collective implementation that works between CPU-only hosts.
    options = tf.distribute.experimental.CommunicationOptions(
        implementation=tf.distribute.experimental.CommunicationImplementation.RING
    )
    return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)


def check_workers(cfg, workers: int) -> None:
    """Raises ValueError unless `cfg` trains on `workers` worker processes: the global batch
    splits evenly between them, and mixed negatives are off (not supported across workers yet).

    The launcher checks before any worker starts (`ebr train --workers`), each worker again
    against its strategy's replicas (`models.training`)."""
    cfg.train.check_splits_over(workers)
    if workers > 1 and cfg.model.corpus_negatives:
        raise ValueError(
            f"model.corpus_negatives = {cfg.model.corpus_negatives} is not supported with {workers} workers yet: set it to 0"
        )


def is_chief(strategy) -> bool:
    return strategy is None or strategy.cluster_resolver.task_id == 0


def worker_dataset(source, tcfg, signature, context):
    """This worker's slice of every global batch, epoch after epoch.

    Every worker draws the same permutation per epoch (seeds train.seed, train.seed + 1,
    ... as one process does) and keeps rows [i*b, (i+1)*b) of each global batch of
    train.batch_size, b = batch_size / workers: the global batches are the single-process
    ones. Features are computed for this worker's rows only.
    """
    import tensorflow as tf

    per_replica = context.get_per_replica_batch_size(tcfg.batch_size)
    first = context.input_pipeline_id * per_replica
    seeds = iter(range(tcfg.seed, tcfg.seed + 10_000))

    def slices():
        for rows in source.batch_rows(tcfg.batch_size, next(seeds)):
            yield source.batch(np.asarray(rows[first : first + per_replica]))

    return tf.data.Dataset.from_generator(slices, output_signature=signature).repeat().prefetch(2)


def weights_digest(model) -> str:
    """sha256 over the model's weights: equal on every worker of a run that stayed in sync."""
    digest = hashlib.sha256()
    for weight in model.get_weights():
        digest.update(np.ascontiguousarray(weight).tobytes())
    return digest.hexdigest()


def mean_over_workers(strategy, value: float) -> float:
    """The mean of every worker's `value` (a collective: every worker must call it)."""
    import tensorflow as tf

    return float(_mean_function(strategy)(tf.constant(value, tf.float32)))


def wait_for_every_worker(strategy) -> None:
    """Returns when every worker has called it: the workers that finish first stay up while
    the chief evaluates and publishes (a worker that exits is reported by TensorFlow's
    coordination service as a crashed task)."""
    if strategy is not None:
        mean_over_workers(strategy, 1.0)


_MEAN_FUNCTIONS: dict[int, Any] = {}


def _mean_function(strategy):
    # One traced function per strategy: run eagerly, each collective call would log that
    # eager CollectiveAllReduceStrategy "has significant overhead".
    import tensorflow as tf

    if id(strategy) not in _MEAN_FUNCTIONS:

        @tf.function
        def mean(value):
            per_worker = strategy.run(tf.identity, args=(value,))
            return strategy.reduce(tf.distribute.ReduceOp.MEAN, per_worker, axis=None)

        _MEAN_FUNCTIONS[id(strategy)] = mean
    return _MEAN_FUNCTIONS[id(strategy)]
