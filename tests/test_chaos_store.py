"""Fault injection on the artifact store with real processes (issue #13, store items).

Children are forked (fast: the parent has imported everything) and either race each
other or SIGKILL themselves at a chosen instant: `_die_at(n)` traces the child and kills
it before the n-th line of `artifacts/` code it would run, so a sweep over n crashes a
write, a commit or a pointer swap at every step. After each crash or race the invariants
of DESIGN.md ("Artifact store layout") are checked:

- LATEST names a version whose every file verifies;
- no complete version changes after its commit;
- the store stays listable (and retention cleans up what the crash left);
- the pointer generation never goes down.
"""

import json
import multiprocessing as mp
import os
import signal
import sys
import uuid
from pathlib import Path

import pytest

import artifacts
from artifacts import ArtifactStore, VersionExistsError
from artifacts.store import ArtifactKind
from config import StoreConfig
from tests.conftest import gcs_store

KIND = "indexes/stories"
ARTIFACTS_DIR = str(Path(artifacts.__file__).parent)
FORK = mp.get_context("fork")


# -- harness ----------------------------------------------------------------------------------


def _die_at(n: int) -> None:
    """SIGKILLs this process just before it runs its n-th line of artifacts/ code."""
    seen = 0

    def trace(frame, event, arg):
        nonlocal seen
        if event == "line":
            seen += 1
            if seen >= n:
                os.kill(os.getpid(), signal.SIGKILL)
        return trace

    def calls(frame, event, arg):
        return trace if frame.f_code.co_filename.startswith(ARTIFACTS_DIR) else None

    sys.settrace(calls)


def _count_lines(work) -> int:
    """How many lines of artifacts/ code `work()` runs (in this process)."""
    seen = 0

    def trace(frame, event, arg):
        nonlocal seen
        if event == "line":
            seen += 1
        return trace

    def calls(frame, event, arg):
        return trace if frame.f_code.co_filename.startswith(ARTIFACTS_DIR) else None

    sys.settrace(calls)
    try:
        work()
    finally:
        sys.settrace(None)
    return seen


def _child(work, die_at):
    def run():
        if die_at:
            _die_at(die_at)
        work()
        sys.settrace(None)
        os._exit(0)

    return run


def run_killed(work, die_at: int | None) -> int:
    """Runs `work` in a forked child killed at line `die_at` (None: not killed); its exit code."""
    process = FORK.Process(target=_child(work, die_at))
    process.start()
    process.join(timeout=60)
    assert process.exitcode is not None, "child hung"
    return process.exitcode


def sweep(total: int, points: int) -> list[int]:
    """About `points` crash instants spread over `total` lines (always the first and last)."""
    step = max(1, total // points)
    return sorted({*range(1, total + 1, step), total})


def store_at(root: Path, grace_hours: float = 24.0) -> ArtifactStore:
    store = ArtifactStore.open(f"file://{root}")
    store.config = StoreConfig(incomplete_grace_hours=grace_hours)
    return store


def write_version(kind: ArtifactKind, name: str, payload: bytes, files: int = 3):
    with kind.new_version(name, parents={"model_version": "m1"}) as v:
        for i in range(files):
            v.add_bytes(f"part-{i:05d}.bin", payload + bytes([i]))
    return v.manifest


def snapshot_of(kind: ArtifactKind) -> dict[str, dict[str, bytes]]:
    """Every complete version's files, read through its manifest (checksums verified)."""
    return {v: {n: kind.read_file(v, n) for n in kind.manifest(v).files} for v in kind.complete_versions()}


def assert_invariants(kind: ArtifactKind, before: dict[str, dict[str, bytes]], generation_before: int) -> int:
    infos = kind.versions()  # listable whatever the crash left
    latest = kind.latest()
    if latest is not None:
        kind.verify(latest)
    for version, files in before.items():  # what was complete stays byte for byte
        assert {n: kind.read_file(version, n) for n in kind.manifest(version).files} == files
    for info in infos:
        if info.complete:
            kind.verify(info.name)
    generation = kind.backend.read_pointer(kind._key("LATEST"))[1]
    assert generation >= generation_before
    return generation


# -- 1. two attempts at one version name ------------------------------------------------------


def _attempt(store_factory, name: str, payload: bytes, start, first_committed, lose: bool, results):
    kind = store_factory().kind(KIND)
    writer = kind.new_version(name)
    start.wait()
    writer.add_bytes("part-00000.bin", payload)
    if lose:  # the zombie: stalls, and goes on writing after the other attempt committed
        first_committed.wait(30)
    for i in range(1, 20):
        writer.add_bytes(f"part-{i:05d}.bin", payload * (i + 1))
    try:
        writer.commit()
        results.put(("committed", payload))
    except VersionExistsError:
        results.put(("refused", payload))
    if not lose:
        first_committed.set()


def _race_on_one_name(store_factory, trials: int):
    for trial in range(trials):
        name = f"20261123T0000{trial:02d}Z-retried"
        start, first_committed, results = FORK.Barrier(2), FORK.Event(), FORK.Queue()
        procs = [
            FORK.Process(target=_attempt, args=(store_factory, name, payload, start, first_committed, lose, results))
            for payload, lose in ((b"fresh-task", False), (b"zombie-task", True))
        ]
        for p in procs:
            p.start()
        outcomes = sorted(results.get(timeout=60) for _ in procs)
        for p in procs:
            p.join(timeout=60)
            assert p.exitcode == 0
        assert outcomes == [("committed", b"fresh-task"), ("refused", b"zombie-task")]
        kind = store_factory().kind(KIND)
        manifest = kind.verify(name)  # every file is the bytes the winner hashed
        assert kind.read_file(name, "part-00003.bin") == b"fresh-task" * 4
        assert len(manifest.files) == 20
        assert kind.publish(name, reason="after the race").latest == name


def test_two_attempts_at_one_version_name_leave_one_verifying_version(tmp_path):
    _race_on_one_name(lambda: ArtifactStore.open(f"file://{tmp_path}"), trials=3)
    # The loser removed its staging: only the winner's attempt folder is left.
    for version in ArtifactStore.open(f"file://{tmp_path}").kind(KIND).complete_versions():
        assert len(list((tmp_path / KIND / version / ".attempts").iterdir())) == 1


def test_two_attempts_at_one_version_name_on_gcs(generation_gate):
    prefix = f"run-{uuid.uuid4().hex}"
    _race_on_one_name(lambda: gcs_store(generation_gate.endpoint, prefix), trials=1)


def test_a_crash_at_any_instant_of_a_first_write_keeps_the_store_sound(tmp_path):
    def prepare(root):
        kind = store_at(root).kind(KIND)
        write_version(kind, "20261123T000000Z-good", b"good")
        kind.publish("20261123T000000Z-good", reason="good build")
        return kind

    def work(root):
        def run():
            kind = store_at(root).kind(KIND)
            write_version(kind, "20261123T010000Z-next", b"next")
            kind.publish("20261123T010000Z-next", reason="next build")

        return run

    probe = tmp_path / "probe"
    prepare(probe)
    total = _count_lines(work(probe))
    for n in sweep(total, 30):
        root = tmp_path / f"crash-{n}"
        kind = prepare(root)
        before, generation = snapshot_of(kind), kind.backend.read_pointer(f"{KIND}/LATEST")[1]
        assert run_killed(work(root), n) == -signal.SIGKILL
        assert_invariants(kind, before, generation)
        assert kind.latest() in ("20261123T000000Z-good", "20261123T010000Z-next")
        # Retention (grace 0) cleans whatever the crash left; a retry then completes.
        swept = store_at(root, grace_hours=0).kind(KIND)
        swept.retain(5)
        assert all(v.complete for v in swept.versions())
        if not swept.is_complete("20261123T010000Z-next"):
            write_version(swept, "20261123T010000Z-next", b"retry")
        assert swept.publish("20261123T010000Z-next", reason="retry").latest == "20261123T010000Z-next"
        swept.verify("20261123T010000Z-next")


def test_publish_and_every_reuse_path_verify_a_complete_version(tmp_path):
    import numpy as np

    from artifacts import CorruptArtifactError
    from artifacts.embedding_snapshots import publish_snapshot

    kind = ArtifactStore.open(f"file://{tmp_path}").kind("embeddings/users")
    ids, vectors = np.array(["u1", "u2"], dtype=object), np.eye(2, dtype=np.float32)
    publish_snapshot(kind, "20261123T000000Z-a", ids, vectors, model_version="m1", as_of=0, reason="first")
    path = kind.backend.local_path(kind.file_key("20261123T000000Z-a", "part-00000-of-00001.parquet"))
    path.write_bytes(path.read_bytes()[:-3])  # damaged after its commit
    with pytest.raises(CorruptArtifactError):
        kind.publish("20261123T000000Z-a", reason="rerun")
    with pytest.raises(CorruptArtifactError):  # the rerun path finds it complete and must not trust it
        publish_snapshot(kind, "20261123T000000Z-a", ids, vectors, model_version="m1", as_of=0, reason="rerun")


# -- 2. listing what a crash or a write in progress leaves -------------------------------------


@pytest.mark.parametrize("leftover", ["empty folder", "only a temporary file", "staging without manifest"])
def test_listing_survives_in_progress_and_crashed_writes(tmp_path, leftover):
    store = store_at(tmp_path)
    kind = store.kind(KIND)
    write_version(kind, "20261123T000000Z-good", b"good")
    folder = tmp_path / KIND / "20261123T010000Z-crashed"
    folder.mkdir(parents=True)
    if leftover == "only a temporary file":
        (folder / "index.hnsw.tmp-0123abcd").write_bytes(b"half")
    elif leftover == "staging without manifest":
        kind.new_version("20261123T010000Z-crashed").add_bytes("index.hnsw", b"half")
    assert [(v.name, v.complete) for v in kind.versions()] == [
        ("20261123T000000Z-good", True),
        ("20261123T010000Z-crashed", False),
    ]
    with pytest.raises(artifacts.UnknownVersionError, match="newest complete: 20261123T000000Z-good"):
        kind.manifest("nope")
    assert kind.retain(5).deleted == []  # young: may still be being written
    assert store_at(tmp_path, grace_hours=0).kind(KIND).retain(5).deleted == ["20261123T010000Z-crashed"]
    assert not folder.exists()
    assert [v.name for v in kind.versions()] == ["20261123T000000Z-good"]


# -- 3. the local generation counter ----------------------------------------------------------


def test_a_crash_at_any_instant_of_a_pointer_swap_never_lowers_the_generation(tmp_path):
    def prepare(root):
        backend = store_at(root).backend
        for i in range(28):
            backend.swap_pointer("k/LATEST", f"v{i}", i)
        return backend

    def work(root):
        return lambda: store_at(root).backend.swap_pointer("k/LATEST", "late", 28)

    prepare(tmp_path / "probe")
    total = _count_lines(work(tmp_path / "probe"))
    for n in sweep(total, 30):
        root = tmp_path / f"crash-{n}"
        backend = prepare(root)
        assert run_killed(work(root), n) == -signal.SIGKILL
        value, generation = backend.read_pointer("k/LATEST")
        assert (value, generation) in (("v27", 28), ("v27", 29), ("late", 29)), n
        # A publisher that read generation 28 or earlier before the crash must lose now
        # unless the pointer still is where it saw it.
        for stale in {1, 27, *([28] if generation == 29 else [])}:
            with pytest.raises(artifacts.PointerConflictError):
                backend.swap_pointer("k/LATEST", "stale", stale)
        assert backend.swap_pointer("k/LATEST", "next", generation) == generation + 1


def test_a_generation_kept_by_older_code_in_the_lock_file_is_never_lowered(tmp_path):
    backend = store_at(tmp_path).backend
    (tmp_path / "k").mkdir()
    (tmp_path / "k" / "LATEST").write_text("v27\n")
    (tmp_path / "k" / ".LATEST.lock").write_text("28\n")  # how the counter was kept before
    assert backend.read_pointer("k/LATEST") == ("v27", 28)
    assert backend.swap_pointer("k/LATEST", "v28", 28) == 29
    assert backend.read_pointer("k/LATEST") == ("v28", 29)


# -- 4. "newer" is the store's commit order ---------------------------------------------------


def test_newer_is_the_commit_order_not_the_name(tmp_path):
    kind = store_at(tmp_path).kind(KIND)
    write_version(kind, "my-first-model", b"a")
    assert kind.publish("my-first-model", reason="manual").moved
    write_version(kind, "20261123T000000Z-scheduled", b"b")
    result = kind.publish("20261123T000000Z-scheduled", reason="scheduled")
    assert result.moved and kind.latest() == "20261123T000000Z-scheduled"
    late = kind.publish("my-first-model", reason="a slow run finishing late")
    assert not late.moved and late.skipped == "older" and "newer 20261123T000000Z-scheduled" in late.detail
    write_version(kind, "0-another-manual-one", b"c")
    assert kind.retain(2).deleted == ["my-first-model"]  # newest = committed last
    assert kind.complete_versions() == ["20261123T000000Z-scheduled", "0-another-manual-one"]


# -- 5. HISTORY.jsonl in the pointer's order --------------------------------------------------


def _move_back_and_forth(store_factory, names, moves, start):
    kind = store_factory().kind(KIND)
    start.wait()
    for i in range(moves):
        kind.rollback_to(names[i % len(names)], reason="race", verify=False)


def _history_follows_the_pointer(store_factory, processes: int, moves: int):
    kind = store_factory().kind(KIND)
    names = [f"20261123T00000{i}Z-v" for i in range(3)]
    for name in names:
        write_version(kind, name, name.encode(), files=1)
    start = FORK.Barrier(processes)
    procs = [
        FORK.Process(target=_move_back_and_forth, args=(store_factory, names[i % 2 :], moves, start))
        for i in range(processes)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    history = kind.history()
    generations = [m.generation for m in history]
    assert generations == sorted(generations) and len(set(generations)) == len(generations)
    for before, after in zip(history, history[1:], strict=False):
        assert after.from_version == before.to_version  # one chain, in the pointer's order
    assert history[-1].to_version == kind.latest()
    return history


def test_history_lines_are_in_the_pointer_order_with_8_racing_processes(tmp_path):
    history = _history_follows_the_pointer(lambda: ArtifactStore.open(f"file://{tmp_path}"), processes=8, moves=40)
    assert [m.generation for m in history] == list(range(1, len(history) + 1))
    lines = (tmp_path / KIND / "HISTORY.jsonl").read_text().splitlines()
    assert [json.loads(line)["generation"] for line in lines] == list(range(1, len(lines) + 1))


def test_history_lines_are_in_the_pointer_order_on_gcs(generation_gate):
    prefix = f"run-{uuid.uuid4().hex}"
    _history_follows_the_pointer(lambda: gcs_store(generation_gate.endpoint, prefix), processes=4, moves=6)
