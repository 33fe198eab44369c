"""Publishers in separate processes: no lost update, and a killed one leaves no trace."""

import itertools
import multiprocessing as mp
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from artifacts import ArtifactStore, IncompleteVersionError
from tests.cas import increment

KIND = "embeddings/users"
PROCESSES = 4


def _increment(root: str, times: int, barrier, conflicts) -> None:
    """Read-modify-write increments of a counter kept in a pointer, retried on conflict;
    puts how many swaps this process lost to another on `conflicts`."""
    backend = ArtifactStore.open(root).backend
    barrier.wait()
    conflicts.put(sum(increment(backend, "counters/LATEST") for _ in range(times)))


def _publish_many(root: str, worker: int, count: int, barrier, results) -> None:
    kind = ArtifactStore.open(root).kind(KIND)
    names = [f"20261123T{i:06d}Z-worker{worker}" for i in range(count)]
    for name in names:
        with kind.new_version(name) as v:
            v.add_bytes("part-00000.parquet", name.encode())
    barrier.wait()
    for name in names:
        results.put((name, kind.publish(name, reason=f"worker {worker}").moved))


def _run_all(procs) -> None:
    for p in procs:
        p.start()


def _join_all(procs) -> None:
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0


def test_compare_and_swap_loses_no_increment_across_processes(tmp_path):
    root, per_process = f"file://{tmp_path}", 150  # enough for the processes to collide (asserted below)
    ctx = mp.get_context("spawn")
    barrier, conflicts = ctx.Barrier(PROCESSES), ctx.Queue()  # all start incrementing at the same moment
    procs = [ctx.Process(target=_increment, args=(root, per_process, barrier, conflicts)) for _ in range(PROCESSES)]
    _run_all(procs)
    lost = [conflicts.get(timeout=120) for _ in range(PROCESSES)]
    _join_all(procs)
    value, generation = ArtifactStore.open(root).backend.read_pointer("counters/LATEST")
    assert int(value) == PROCESSES * per_process
    assert generation == PROCESSES * per_process
    assert sum(lost) > 0, "the processes never collided, so this test proved nothing; raise the counts"


def test_concurrent_publishers_keep_one_linear_history(tmp_path):
    root, per_process = f"file://{tmp_path}", 15
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(PROCESSES), ctx.Queue()
    procs = [ctx.Process(target=_publish_many, args=(root, i, per_process, barrier, results)) for i in range(PROCESSES)]
    _run_all(procs)
    outcomes = [results.get(timeout=120) for _ in range(PROCESSES * per_process)]
    _join_all(procs)
    kind = ArtifactStore.open(root).kind(KIND)
    history = kind.history()
    moved = sorted(name for name, did_move in outcomes if did_move)
    # Every successful publish is in the log exactly once, and the log is one chain:
    # each move starts where the previous one ended (nobody overwrote a move unseen).
    assert sorted(m.to_version for m in history) == moved
    assert history[0].from_version is None
    # "Newer" is the store's commit order (the names sort differently across workers).
    order = {name: kind.manifest(name).sequence for name, _ in outcomes}
    for before, after in itertools.pairwise(history):
        assert after.from_version == before.to_version
        assert order[after.to_version] > order[before.to_version]  # never moved backwards
    assert [m.generation for m in history] == list(range(1, len(history) + 1))
    newest = max(order, key=order.get)
    assert kind.latest() == newest == history[-1].to_version


WRITER = textwrap.dedent(
    """
    import sys, time
    from artifacts import ArtifactStore
    kind = ArtifactStore.open(sys.argv[1]).kind("indexes/stories")
    with kind.new_version("v002") as v:
        for i in range(1000):
            v.add_bytes(f"shard-{i:04d}.bin", b"x" * 1024)
            print(i, flush=True)
            time.sleep(0.01)
    kind.publish("v002", reason="should never get here")
    """
)


def test_a_publisher_killed_mid_upload_leaves_latest_on_a_complete_version(tmp_path):
    root = f"file://{tmp_path}"
    kind = ArtifactStore.open(root).kind("indexes/stories")
    with kind.new_version("v001") as v:
        v.add_bytes("shard-0000.bin", b"good")
    kind.publish("v001", reason="good build")

    writer = subprocess.Popen([sys.executable, "-c", WRITER, root], stdout=subprocess.PIPE, text=True)
    for _ in range(20):  # let it upload twenty files, then kill it without warning
        writer.stdout.readline()
    writer.send_signal(signal.SIGKILL)
    writer.wait(timeout=30)
    assert writer.returncode == -signal.SIGKILL

    assert kind.latest() == "v001"
    assert [(v.name, v.complete) for v in kind.versions()] == [("v001", True), ("v002", False)]
    assert kind.complete_versions() == ["v001"]
    with pytest.raises(IncompleteVersionError):
        kind.manifest("v002")
    with pytest.raises(IncompleteVersionError):
        kind.download("v002", tmp_path / "cache")
    with pytest.raises(IncompleteVersionError):
        kind.rollback_to("v002", reason="partial")
    kind.verify("v001")
    # The killed process held no lock that outlives it: the next publisher proceeds at once.
    with kind.new_version("v003") as v:
        v.add_bytes("shard-0000.bin", b"next")
    started = time.monotonic()
    assert kind.publish("v003", reason="next build").moved
    assert time.monotonic() - started < 5
