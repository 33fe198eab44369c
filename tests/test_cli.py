"""The `ebr` command line, run as a user would."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from artifacts import ArtifactStore
from cli.main import main
from tests.serving_support import publish_model_versions


def ebr(capsys, root, *args):
    code = main(["--root", root, *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_generate_show_and_refuse_to_overwrite(tmp_path, capsys):
    root = f"file://{tmp_path}"
    code, out, _ = ebr(capsys, root, "data", "generate", "--size", "tiny", "--events", "5000", "--no-progress")
    assert code == 0 and "5,000 events over 14 days" in out
    code, out, _ = ebr(capsys, root, "data", "show")
    assert code == 0 and "5,000" in out and "synthetic" in out
    code, out, _ = ebr(capsys, root, "data", "show", "--json")
    assert json.loads(out)["rows"]["events"] == 5_000
    with pytest.raises(SystemExit, match="--overwrite"):
        main(["--root", root, "data", "generate", "--size", "tiny", "--no-progress"])


def test_artifact_commands_list_rollback_and_retain(tmp_path, capsys):
    root = f"file://{tmp_path}"
    kind = ArtifactStore.open(root).kind("indexes/stories")
    for name in ("v001", "v002", "v003"):
        with kind.new_version(name, parents={"model_version": "m7"}) as v:
            v.add_bytes("index.hnsw", name.encode())
        kind.publish(name, reason="build")
    code, out, _ = ebr(capsys, root, "artifacts", "list")
    assert code == 0 and "indexes/stories" in out and "v003" in out
    code, out, _ = ebr(capsys, root, "artifacts", "list", "indexes/stories")
    assert "* v003" in out and "model_version=m7" in out
    code, out, _ = ebr(
        capsys, root, "artifacts", "rollback", "indexes/stories", "--to", "v001", "--reason", "bad recall"
    )
    assert code == 0 and "from v003 to v001" in out
    code, out, _ = ebr(capsys, root, "artifacts", "history", "indexes/stories")
    assert "rollback" in out and "bad recall" in out
    code, out, _ = ebr(capsys, root, "artifacts", "show", "indexes/stories")
    assert json.loads(out)["version"] == "v001"
    code, out, _ = ebr(capsys, root, "artifacts", "retain", "indexes/stories", "--keep", "1")
    assert code == 0 and "deleted 1 (v002)" in out
    code, out, _ = ebr(capsys, root, "artifacts", "verify", "indexes/stories", "v003")
    assert "all checksums match" in out


@pytest.mark.parametrize(
    "command", [["artifacts", "retain", "indexes/stories"], ["index", "retain", "--collection", "stories"]]
)
def test_retain_commands_keep_the_pair_a_restarting_service_serves(tmp_path, capsys, command):
    """The story index moved on to model m2 while the user embeddings are still m1's: a
    service starting now serves the m1 pair (i1, u1), so `--keep 1` deletes i2 but keeps i1
    beside LATEST's i3, as the ebr_retention DAG does, and says why."""
    root = f"file://{tmp_path}"
    store = ArtifactStore.open(root)
    publish_model_versions(
        store,
        (
            ("embeddings/users", "u1", "m1"),
            ("indexes/stories", "i1", "m1"),
            ("indexes/stories", "i2", "m2"),
            ("indexes/stories", "i3", "m2"),
        ),
    )
    code, out, _ = ebr(capsys, root, *command, "--keep", "1")
    assert code == 0 and "deleted 1 (i2)" in out and "kept i1 too" in out
    assert store.kind("indexes/stories").complete_versions() == ["i1", "i3"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["artifacts", "rollback", "indexes/stories", "--to", "../../etc", "--reason", "x"], "not allowed"),
        (["artifacts", "rollback", "indexes/stories", "--to", "v404", "--reason", "x"], "no version 'v404'"),
        (["data", "show"], "ebr data generate"),
        (["--set", "store.keep_versions=zero", "data", "show"], "store.keep_versions"),
    ],
)
def test_mistakes_give_one_clear_line_and_a_non_zero_exit(tmp_path, capsys, args, message):
    code = main(["--root", f"file://{tmp_path}", *args])
    _, err = capsys.readouterr()
    assert code != 0
    assert err.startswith("error: ") and message in err
    assert "Traceback" not in err


def test_the_console_script_is_installed_and_documents_itself():
    ebr_script = Path(sys.executable).with_name("ebr")
    env = {**os.environ, "EBR_ROOT": "file:///tmp/unused"}
    result = subprocess.run([str(ebr_script), "--help"], capture_output=True, text=True, env=env, check=True)
    assert "data" in result.stdout and "artifacts" in result.stdout and "examples:" in result.stdout
    result = subprocess.run([str(ebr_script), "config", "show"], capture_output=True, text=True, env=env, check=True)
    assert json.loads(result.stdout)["root"] == "file:///tmp/unused"


@pytest.mark.slow
def test_train_publishes_a_model_and_a_rerun_reuses_it(tmp_path, capsys):
    from tests.test_training import TINY_TRAINING

    root = f"file://{tmp_path}/root"
    # The baselines as configured: their tuning is tests/test_training.py's (~50 s here).
    tuning = ["train.epochs=3", "train.tune_baselines=false"]
    settings = [arg for setting in [*TINY_TRAINING, *tuning] for arg in ("--set", setting)]
    assert main(["--root", root, *settings, "data", "generate", "--no-progress"]) == 0
    run = [
        "--root",
        root,
        *settings,
        "train",
        "--version",
        "20261123T000000Z-train-test",
        "--workdir",
        str(tmp_path / "work"),
    ]
    code = main(run)
    out, _ = capsys.readouterr()
    assert "recall@100" in out and "popularity" in out and "als" in out
    assert "gate: promote" in out and code == 0
    assert ArtifactStore.open(root).kind("models/two_tower").latest() == "20261123T000000Z-train-test"
    assert main(run) == 0
    out, _ = capsys.readouterr()
    assert "was trained already" in out


def _broken_root(tmp_path, case):
    """An artifact root damaged the way `case` says; returns the --root URI and the command."""
    root = tmp_path / "root"
    stories = root / "indexes" / "stories"
    if case == "root is a file":
        root.write_text("not a folder")
    elif case == "root is a symlink loop":
        root.symlink_to(root)
    else:
        kind = ArtifactStore.open(f"file://{root}").kind("indexes/stories")
        with kind.new_version("v001") as v:
            v.add_bytes("index.hnsw", b"x")
        kind.publish("v001", reason="build")
        if case == "LATEST is a folder":
            (stories / "LATEST").unlink()
            (stories / "LATEST").mkdir()
        elif case == "LATEST is binary":
            (stories / "LATEST").write_bytes(b"\xff\xfe\x00\x81")
        elif case == "garbage lock file":
            (stories / ".LATEST.gen").unlink()
            (stories / ".LATEST.lock").write_bytes(b"\x00garbage")
    return f"file://{root}"


@pytest.mark.parametrize(
    "case, args",
    [
        ("root is a file", ["artifacts", "list", "indexes/stories"]),
        ("root is a symlink loop", ["artifacts", "list"]),
        ("LATEST is a folder", ["artifacts", "show", "indexes/stories"]),
        ("LATEST is binary", ["artifacts", "verify", "indexes/stories"]),
        ("garbage lock file", ["artifacts", "rollback", "indexes/stories", "--to", "v001", "--reason", "x"]),
        ("healthy", ["artifacts", "retain", "indexes/stories", "--keep", "-3"]),
        ("healthy", ["artifacts", "retain", "indexes/stories", "--keep", "0"]),
        ("healthy", ["index", "retain", "--collection", "stories", "--keep", "0"]),
        ("healthy", ["artifacts", "rollback", "indexes/stories", "--to", "v999", "--reason", "typo"]),
        ("gs:// without credentials", ["artifacts", "list"]),
    ],
)
def test_every_store_failure_is_one_error_line_and_a_non_zero_exit(tmp_path, case, args):
    root = "gs://ebr-no-such-bucket/x" if case.startswith("gs://") else _broken_root(tmp_path, case)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GOOGLE_", "CLOUDSDK_", "EBR_"))}
    env.update(HOME=str(tmp_path), CLOUDSDK_CONFIG=str(tmp_path / "gcloud"), NO_GCE_CHECK="True")
    done = subprocess.run(
        [sys.executable, "-m", "cli.main", "--root", root, *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=Path(__file__).resolve().parents[1],
        timeout=120,
    )
    lines = done.stderr.strip().splitlines()
    assert done.returncode != 0, done.stdout
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    if case == "healthy" and "retain" in args:
        assert "--keep must be at least 1" in lines[0]
        assert ArtifactStore.open(root).kind("indexes/stories").complete_versions() == ["v001"]


def test_a_bad_latest_affects_only_its_own_kind(tmp_path, capsys):
    from artifacts import CorruptArtifactError

    root = f"file://{tmp_path}"
    store = ArtifactStore.open(root)
    for name in ("indexes/stories", "embeddings/users"):
        with store.kind(name).new_version("v001") as v:
            v.add_bytes("part-0.bin", b"x")
        store.kind(name).publish("v001", reason="build")
    (tmp_path / "indexes" / "stories" / "LATEST").write_bytes(b"\xc3\x28 not utf-8")
    with pytest.raises(CorruptArtifactError, match="indexes/stories/LATEST"):
        store.kind("indexes/stories").latest()
    assert store.kind("embeddings/users").latest() == "v001"
    code, out, _ = ebr(capsys, root, "artifacts", "list")
    assert code == 0 and "UNREADABLE" in out and "v001" in out
