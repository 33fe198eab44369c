"""`ebr index ...` end to end through `cli.main.main`, on a real local store."""

from __future__ import annotations

import json

import pytest

from artifacts import ArtifactStore
from artifacts.embedding_snapshots import publish_snapshot
from benchmarks.synthetic_vectors import clustered_vectors, story_ids
from cli.main import main


@pytest.fixture
def root(tmp_path) -> str:
    uri = f"file://{tmp_path}/root"
    store = ArtifactStore.open(uri)
    for name, model in (("20261124T000000Z-a", "m1"), ("20261124T003000Z-b", "m1")):
        publish_snapshot(
            store.kind("embeddings/stories"),
            name,
            story_ids(0, 1500),
            clustered_vectors(1500, 16, clusters=10),
            model_version=model,
            as_of=0,
            reason="test",
        )
    return uri


def ebr(root: str, *args: str) -> int:
    return main(["--root", root, "--set", "index.ef_construction=64", *args])


def test_index_commands_build_list_show_rollback_retain(root, capsys):
    assert ebr(root, "index", "build", "--collection", "stories", "--snapshot", "20261124T000000Z-a") == 0
    assert ebr(root, "index", "build", "--collection", "stories") == 0  # LATEST snapshot: b, incremental
    out = capsys.readouterr().out
    assert "indexes/stories/20261124T000000Z-a (full)" in out and "recall_at_10" in out
    assert "indexes/stories/20261124T003000Z-b (incremental)" in out and "LATEST moved" in out

    assert ebr(root, "index", "list") == 0
    listing = capsys.readouterr().out
    assert "* 20261124T003000Z-b" in listing and "incremental" in listing and "m1" in listing

    assert ebr(root, "index", "show", "--collection", "stories") == 0
    manifest = json.loads(capsys.readouterr().out)
    assert manifest["version"] == "20261124T003000Z-b" and manifest["params"]["mode"] == "incremental"
    assert manifest["parents"]["previous_index"] == "20261124T000000Z-a"

    assert (
        ebr(root, "index", "rollback", "--collection", "stories", "--to", "20261124T000000Z-a", "--reason", "smoke")
        == 0
    )
    assert "LATEST moved from 20261124T003000Z-b to 20261124T000000Z-a" in capsys.readouterr().out

    assert ebr(root, "index", "retain", "--collection", "stories", "--keep", "1", "--dry-run") == 0
    assert "would delete 0" in capsys.readouterr().out  # the newest is kept, and LATEST names the other

    assert ebr(root, "index", "rollback", "--collection", "stories", "--to", "nope", "--reason", "x") == 1
    assert "error: indexes/stories has no version 'nope'" in capsys.readouterr().err


def test_index_build_refused_by_validation_exits_3_and_publishes_nothing(root, capsys):
    code = ebr(
        root,
        "--set",
        "index.m=2",
        "--set",
        "index.ef_construction=2",
        "--set",
        "index.ef_search=1",
        "--set",
        "index.min_recall_at_10=0.999",
        "index",
        "build",
    )

    assert code == 3
    assert "refused: " in capsys.readouterr().out
    assert ArtifactStore.open(root).kind("indexes/stories").latest() is None
