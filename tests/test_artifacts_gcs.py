"""The GCS backend with the real google-cloud-storage client against gcp-storage-emulator.

The emulator ignores `ifGenerationMatch`; `test_the_emulator_alone_ignores_preconditions`
pins that down, and the compare-and-swap tests run through `GenerationGate`, which
enforces the precondition as GCS does (see tests/gcs_support.py).
"""

import threading
import uuid

import pytest

from artifacts import CorruptArtifactError, IncompleteVersionError, UnknownVersionError
from artifacts.errors import PointerConflictError
from tests.cas import increment
from tests.conftest import gcs_store


def make_version(kind, name, payload=b"embeddings"):
    with kind.new_version(name, parents={"model_version": "m1"}) as v:
        v.add_bytes("part-00000.parquet", payload)
        v.add_bytes("ids.txt", b"u1\nu2\n")


def test_versions_publish_rollback_and_retention_on_gcs(gcs_emulator, tmp_path):
    store = gcs_store(gcs_emulator.endpoint, f"run-{uuid.uuid4().hex}")
    kind = store.kind("embeddings/users")
    for name in ("v001", "v002", "v003"):
        make_version(kind, name, payload=name.encode() * 10)
        assert kind.publish(name, reason="build").moved
    assert store.kinds() == ["embeddings/users"]
    assert kind.complete_versions() == ["v001", "v002", "v003"]
    assert kind.latest() == "v003"
    assert kind.read_file("v002", "part-00000.parquet") == b"v002" * 10
    target = kind.download("v002", tmp_path / "cache")
    assert (target / "ids.txt").read_bytes() == b"u1\nu2\n"

    assert kind.rollback_to("v001", reason="bad model").moved
    assert kind.latest() == "v001"
    assert [(m.action, m.to_version) for m in kind.history()] == [
        ("publish", "v001"),
        ("publish", "v002"),
        ("publish", "v003"),
        ("rollback", "v001"),
    ]
    assert kind.retain(1).deleted == ["v002"]
    assert kind.complete_versions() == ["v001", "v003"]
    with pytest.raises(UnknownVersionError):
        kind.rollback_to("v002", reason="deleted")


def test_incomplete_and_corrupted_versions_are_refused_on_gcs(gcs_emulator):
    store = gcs_store(gcs_emulator.endpoint, f"run-{uuid.uuid4().hex}")
    kind = store.kind("indexes/stories")
    make_version(kind, "v001")
    partial = kind.new_version("v002")
    partial.add_bytes("part-00000.parquet", b"half")
    with pytest.raises(IncompleteVersionError):
        kind.publish("v002", reason="unfinished")
    store.backend.write_bytes(kind.file_key("v001", "part-00000.parquet"), b"tampered!!")
    with pytest.raises(CorruptArtifactError, match="part-00000.parquet"):
        kind.verify("v001")
    with pytest.raises(CorruptArtifactError):
        kind.rollback_to("v001", reason="would serve tampered bytes")


def test_the_emulator_alone_ignores_preconditions(gcs_emulator):
    """Why the gate exists: a stale write goes through on the bare emulator.

    If this starts failing, the emulator has learnt preconditions and the gate can go.
    """
    backend = gcs_store(gcs_emulator.endpoint, f"run-{uuid.uuid4().hex}").backend
    _, generation = backend.read_pointer("k/LATEST")
    backend.swap_pointer("k/LATEST", "a", generation)
    backend.swap_pointer("k/LATEST", "b", generation)  # stale: real GCS answers 412
    assert backend.read_pointer("k/LATEST")[0] == "b"


def test_a_stale_generation_is_refused_through_the_gate(generation_gate):
    backend = gcs_store(generation_gate.endpoint, f"run-{uuid.uuid4().hex}").backend
    value, generation = backend.read_pointer("k/LATEST")
    assert (value, generation) == (None, 0)
    first = backend.swap_pointer("k/LATEST", "a", 0)
    with pytest.raises(PointerConflictError):
        backend.swap_pointer("k/LATEST", "b", 0)  # must-not-exist, but it does
    with pytest.raises(PointerConflictError):
        backend.swap_pointer("k/LATEST", "b", first + 1)  # a generation that never was
    assert backend.swap_pointer("k/LATEST", "b", first) != first
    assert backend.read_pointer("k/LATEST")[0] == "b"


def test_concurrent_gcs_publishers_lose_no_update(generation_gate):
    prefix, workers, per_worker = f"run-{uuid.uuid4().hex}", 4, 10

    def worker():
        backend = gcs_store(generation_gate.endpoint, prefix).backend  # one client per thread
        for _ in range(per_worker):
            increment(backend, "counters/LATEST")
            backend.append_line("counters/HISTORY.jsonl", "{}")

    threads = [threading.Thread(target=worker) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    backend = gcs_store(generation_gate.endpoint, prefix).backend
    assert backend.read_pointer("counters/LATEST")[0] == str(workers * per_worker)
    assert backend.read_bytes("counters/HISTORY.jsonl").count(b"\n") == workers * per_worker
    conflicts = [r for r in generation_gate.requests if r.status == 412 and prefix in (r.object_name or "")]
    assert conflicts, "the workers never collided, so this test proved nothing; raise the counts"


def test_every_pointer_and_manifest_write_carries_a_precondition(generation_gate):
    prefix = f"run-{uuid.uuid4().hex}"
    kind = gcs_store(generation_gate.endpoint, prefix).kind("indexes/stories")
    make_version(kind, "v001")
    kind.publish("v001", reason="build")
    uploads = [
        r
        for r in generation_gate.requests
        if r.method == "POST" and r.path.startswith("/upload/") and prefix in (r.object_name or "")
    ]
    by_name = {r.object_name.split("/", 1)[1]: r for r in uploads}
    assert by_name["indexes/stories/LATEST"].query["ifGenerationMatch"] == ["0"]
    assert by_name["indexes/stories/v001/MANIFEST.json"].query["ifGenerationMatch"] == ["0"]
    assert "ifGenerationMatch" in by_name["indexes/stories/HISTORY.jsonl"].query
