"""The `ebr` command line, run as a user would."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from artifacts import ArtifactStore
from cli.main import main


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
    code, out, _ = ebr(capsys, root, "artifacts", "rollback", "indexes/stories", "--to", "v001", "--reason", "bad recall")
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
    settings = [arg for setting in [*TINY_TRAINING, "train.epochs=3"] for arg in ("--set", setting)]
    assert main(["--root", root, *settings, "data", "generate", "--no-progress"]) == 0
    run = ["--root", root, *settings, "train", "--version", "20261123T000000Z-train-test", "--workdir", str(tmp_path / "work")]
    code = main(run)
    out, _ = capsys.readouterr()
    assert "recall@100" in out and "popularity" in out and "als" in out
    assert "gate: promote" in out and code == 0
    assert ArtifactStore.open(root).kind("models/two_tower").latest() == "20261123T000000Z-train-test"
    assert main(run) == 0
    out, _ = capsys.readouterr()
    assert "was trained already" in out
