"""Shared fixtures. TF_USE_LEGACY_KERAS must be set before anything imports TensorFlow."""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from artifacts import ArtifactStore  # noqa: E402
from artifacts.gcs import GcsBackend, make_client  # noqa: E402
from config import GcsConfig  # noqa: E402
from tests.gcs_support import EmulatorProcess, GenerationGate  # noqa: E402

MOVIELENS_100K = Path(__file__).resolve().parents[2] / "shared" / "data" / "ml-100k"
GCS_BUCKET = "ebr-test"


@pytest.fixture
def local_store(tmp_path) -> ArtifactStore:
    return ArtifactStore.open(f"file://{tmp_path}/root")


@pytest.fixture(scope="session")
def gcs_emulator():
    """A real gcp-storage-emulator process on 127.0.0.1, stopped after the session."""
    emulator = EmulatorProcess(GCS_BUCKET)
    try:
        yield emulator
    finally:
        emulator.stop()


@pytest.fixture(scope="session")
def generation_gate(gcs_emulator):
    """The emulator behind a proxy that enforces ifGenerationMatch (see gcs_support)."""
    gate = GenerationGate(gcs_emulator.port)
    try:
        yield gate
    finally:
        gate.stop()


def gcs_store(endpoint: str, prefix: str) -> ArtifactStore:
    client = make_client(GcsConfig(endpoint=endpoint, project="ebr-test"))
    return ArtifactStore(GcsBackend(client, GCS_BUCKET, prefix))


@pytest.fixture
def movielens_100k() -> Path:
    if not (MOVIELENS_100K / "u.data").is_file():
        pytest.skip(f"MovieLens 100K not present at {MOVIELENS_100K}")
    return MOVIELENS_100K
