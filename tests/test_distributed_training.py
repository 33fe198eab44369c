"""Training across worker processes (MultiWorkerMirroredStrategy on 127.0.0.1).

The real thing: `ebr train --workers 2` starts two worker processes that train one model
together; the chief evaluates and publishes. Dropout is off so that the two-worker run
and one process can be compared closely: the global batches are the same rows, the
in-batch negatives span the global batch and each worker's loss is its share of the
global mean, so the per-epoch losses must agree.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from artifacts import MODELS, ArtifactStore
from config import load_config
from models.distributed import cluster_config, worker_role
from warehouse import Warehouse
from warehouse.synthetic import generate_world

REPO = Path(__file__).resolve().parents[1]

TINY = [
    "world.size=tiny",
    "world.n_users=300",
    "world.n_events=12000",
    "train.epochs=2",
    "train.batch_size=128",
    "train.learning_rate=0.005",
    "train.warmup_steps=10",
    "train.holdout_days=2",
    "train.eval_ks=[10,100]",
    "train.tune_baselines=false",
    'gate.metrics=["recall@100"]',
    "gate.min_eval_positives=100",
    "model.mlp_width=32",
    "model.id_embedding_dim=16",
    "model.cross_projection_dim=8",
    "model.cross_layers=1",
    "model.dropout=0.0",
    "model.id_dropout=0.0",
]


def ebr(root: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    sets = [a for s in TINY for a in ("--set", s)]
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1"}
    env.pop("TF_CONFIG", None)
    return subprocess.run(
        [sys.executable, "-m", "cli.main", "--root", f"file://{root}", *sets, *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("distributed") / "root"
    cfg = load_config(overrides=[f"root=file://{root}", *TINY], environ={})
    generate_world(cfg.world, Warehouse.from_config(cfg), progress=False)
    return root


@pytest.mark.slow
def test_two_workers_train_one_model_that_the_chief_publishes(world, tmp_path):
    distributed, single = tmp_path / "two", tmp_path / "one"
    run = ebr(world, "train", "--workers", "2", "--workdir", str(distributed), "--version", "v-two")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "LATEST moved" in run.stdout
    worker_log = (distributed / "worker-1.log").read_text()
    assert "worker 1 of 2: trained" in worker_log

    chief = json.loads((distributed / "metrics.json").read_text())
    other = json.loads((distributed / "worker-1" / "metrics.json").read_text())
    # Both workers ended with the same weights, epoch for epoch the same decisions.
    assert chief["weights_sha256"] == other["weights_sha256"]
    assert chief["history"] == other["history"] and chief["best_epoch"] == other["best_epoch"]

    # The published export is the chief's and loads like any other.
    store = ArtifactStore.open(f"file://{world}")
    assert store.kind(MODELS).latest() == "v-two"
    assert store.kind(MODELS).manifest("v-two").params["workers"] == 2

    # One process on the same data: the same losses (the same global batches and
    # negatives, the same optimizer steps), the same figures up to float32 summation order
    # (the losses agreed to 1e-7 at every step on 2026-12-04; before one process stopped
    # counting a phantom optimizer step per epoch they were 0.1-0.2% apart from epoch 2 on).
    alone = ebr(world, "train", "--workdir", str(single), "--version", "v-one", "--no-publish")
    assert alone.returncode == 0, alone.stdout[-3000:] + alone.stderr[-3000:]
    one = json.loads((single / "metrics.json").read_text())
    assert chief["steps_per_epoch"] == one["steps_per_epoch"] > 0
    assert [h["loss"] for h in chief["history"]] == pytest.approx([h["loss"] for h in one["history"]], rel=1e-5)
    assert [h["val_top_100_accuracy"] for h in chief["history"]] == pytest.approx(
        [h["val_top_100_accuracy"] for h in one["history"]], abs=1e-4
    )
    assert chief["metrics"]["model"]["recall@100"] == pytest.approx(one["metrics"]["model"]["recall@100"], abs=0.03)


def test_a_batch_that_does_not_split_over_the_workers_is_refused_before_anything_starts(world):
    run = ebr(world, "train", "--workers", "3", timeout=120)
    assert run.returncode == 2
    assert "error: train.batch_size = 128 does not split evenly over 3 workers" in run.stderr
    assert "Traceback" not in run.stderr


def test_mixed_negatives_are_refused_with_workers_before_anything_starts(world):
    run = ebr(world, "--set", "model.corpus_negatives=64", "train", "--workers", "2", timeout=120)
    assert run.returncode == 2
    assert "error: model.corpus_negatives = 64 is not supported with 2 workers yet" in run.stderr
    assert "Traceback" not in run.stderr


def test_tf_config_is_read_as_a_cluster_only_with_more_than_one_worker():
    two = {"TF_CONFIG": json.dumps(cluster_config([1111, 2222], 1))}
    assert worker_role(two) == (1, 2)
    assert worker_role({"TF_CONFIG": json.dumps(cluster_config([1111], 0))}) is None
    assert worker_role({}) is None
    with pytest.raises(ValueError, match="not one of the 2 workers"):
        worker_role({"TF_CONFIG": json.dumps(cluster_config([1111, 2222], 2))})
    with pytest.raises(ValueError, match="not a worker cluster spec"):
        worker_role({"TF_CONFIG": "{}"})


@pytest.mark.slow
def test_the_training_dag_task_trains_on_workers_and_hands_the_chief_export_to_the_gate(world, tmp_path):
    # What ebr_train's train task runs with train.workers = 2 (an Airflow Variable or the
    # EBR_TRAIN__WORKERS of its workers): the workers, then the usual gate and publish.
    import shutil
    from datetime import UTC, datetime

    from orchestration.runs import RunIdentity
    from orchestration.training import gate_model, publish_trained_model, train_model

    workdir = tmp_path / "work"
    cfg = load_config(
        overrides=[f"root=file://{world}", *TINY, "train.workers=2", f"orchestration.workdir={workdir}"], environ={}
    )
    run = RunIdentity("ebr_train", "manual__workers", datetime(2026, 12, 1, tzinfo=UTC))
    trained = train_model(cfg, run)
    assert not trained["reused"] and trained["staged"]["params"]["workers"] == 2
    assert trained["metrics"]["model"]["eval_users"] > 0
    models = ArtifactStore.open(f"file://{world}").kind(MODELS)
    assert not models.is_complete(run.version)  # staged: invisible until the publish task commits it
    json.dumps(trained)  # an XCom message
    gate = gate_model(cfg, trained)
    assert gate["promote"], gate["reasons"]
    shutil.rmtree(workdir)  # the publish task may run on another machine: nothing local is read
    published = publish_trained_model(cfg, run, trained, gate)
    assert published["latest"] == run.version
    assert models.manifest(run.version).params["workers"] == 2
