"""benchmarks/serving.py's store set-up, which soak.py and router.py reuse: the vectors are the
same every run, and build_store publishes one model's snapshots and a servable index, then
reuses it."""

from __future__ import annotations

import numpy as np

from benchmarks import serving


def test_bench_vectors_are_the_same_every_run_and_users_sit_near_stories():
    stories, user_ids, users = serving.bench_vectors(300, 8, 20)
    again = serving.bench_vectors(300, 8, 20)
    assert np.array_equal(stories, again[0]) and np.array_equal(users, again[2])
    assert list(user_ids[:3]) == ["u0", "u1", "u2"] and users.shape == (20, 8) and users.dtype == np.float32
    assert np.allclose(np.linalg.norm(users, axis=1), 1.0, atol=1e-5)


def test_build_store_publishes_one_model_and_reuses_what_it_built(tmp_path):
    root = f"file://{tmp_path}/root"
    store, version, build_s, users = serving.build_store(root, 300, 8, 20)
    assert build_s is not None and users.shape == (20, 8)
    index = store.kind("indexes/stories").manifest(version)
    assert index.parents["model_version"] == serving.MODEL and index.params["count"] == 300
    for kind in ("embeddings/stories", "embeddings/users"):
        assert store.kind(kind).latest() == "20261124T000000Z-bench"
    again = serving.build_store(root, 300, 8, 20)
    assert again[1] == version and again[2] is None and np.array_equal(again[3], users)


def test_stop_process_interrupts_then_kills_what_ignores_the_interrupt():
    import subprocess
    import sys
    import time

    ignoring = (
        "import signal, time; signal.signal(signal.SIGINT, signal.SIG_IGN); print('ready', flush=True); time.sleep(60)"
    )
    process = subprocess.Popen([sys.executable, "-c", ignoring], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline() == "ready\n"
    started = time.monotonic()
    serving.stop_process(process, 0.5)
    assert process.returncode == -9 and time.monotonic() - started < 10  # SIGKILL after the 0.5 s
    process.stdout.close()
    polite = subprocess.Popen(
        [sys.executable, "-c", "import time; print('ready', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert polite.stdout.readline() == "ready\n"
    serving.stop_process(polite, 30)
    assert polite.returncode not in (None, -9)  # exited on the interrupt (KeyboardInterrupt)
    polite.stdout.close()
    serving.stop_process(polite, 30)  # already gone: nothing to do
