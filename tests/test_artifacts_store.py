"""The artifact store on the local backend: versions, manifests, LATEST, rollback, retention."""

import json
import os
import time

import pytest

from artifacts import (
    CorruptArtifactError,
    IncompleteVersionError,
    InvalidNameError,
    UnknownVersionError,
    VersionExistsError,
    version_name,
)
from artifacts.names import MANIFEST

KIND = "indexes/stories"


def make_version(kind, name, payload=b"vectors", parents=None):
    with kind.new_version(name, parents=parents or {"model_version": "m1"}, params={"M": 16}) as v:
        v.add_bytes("index.hnsw", payload)
        v.add_bytes("ids/part-0.txt", b"s1\ns2\n")
        v.metrics["recall_at_10"] = 0.99
    return v.manifest


def test_manifest_lists_every_file_with_size_and_sha256(local_store):
    kind = local_store.kind(KIND)
    manifest = make_version(kind, "v001")
    assert set(manifest.files) == {"index.hnsw", "ids/part-0.txt"}
    assert manifest.files["index.hnsw"].size == len(b"vectors")
    # `printf vectors | sha256sum`
    assert manifest.files["index.hnsw"].sha256 == "29a6a5e3c39862766d200557894f42fe0afed05234816b0ca9cbb59bbc1d6023"
    written = json.loads((local_store.backend.local_path(f"{KIND}/v001/{MANIFEST}")).read_text())
    assert written["parents"] == {"model_version": "m1"}
    assert written["params"] == {"M": 16} and written["metrics"] == {"recall_at_10": 0.99}
    assert written["schema_version"] == 2  # 2: files in the attempt's staging folder
    assert kind.verify("v001") == manifest


def test_publish_moves_latest_and_records_history(local_store):
    kind = local_store.kind(KIND)
    assert kind.latest() is None
    make_version(kind, "v001")
    make_version(kind, "v002")
    first = kind.publish("v001", reason="first build", run_id="run-1")
    second = kind.publish("v002", reason="second build")
    assert first.moved and second.moved and kind.latest() == "v002"
    moves = kind.history()
    assert [(m.from_version, m.to_version, m.action) for m in moves] == [
        (None, "v001", "publish"),
        ("v001", "v002", "publish"),
    ]
    assert moves[0].run_id == "run-1" and moves[0].reason == "first build"
    assert moves[1].generation == moves[0].generation + 1


def test_publish_is_idempotent_and_never_moves_backwards(local_store):
    kind = local_store.kind(KIND)
    for name in ("v001", "v002"):
        make_version(kind, name)
    kind.publish("v002", reason="new")
    again = kind.publish("v002", reason="rerun of the same run")
    older = kind.publish("v001", reason="slow run finishing late")
    assert not again.moved and "already" in again.detail
    assert not older.moved and "newer v002" in older.detail
    assert kind.latest() == "v002" and len(kind.history()) == 1


def test_versions_are_immutable(local_store):
    kind = local_store.kind(KIND)
    make_version(kind, "v001")
    with pytest.raises(VersionExistsError, match="immutable"):
        kind.new_version("v001")
    # Two writers racing on one name: the first manifest wins, the second is refused.
    a, b = kind.new_version("v002"), kind.new_version("v002")
    a.add_bytes("index.hnsw", b"a")
    b.add_bytes("index.hnsw", b"b")
    b.commit()
    with pytest.raises(VersionExistsError, match="another writer"):
        a.commit()


def test_rollback_moves_back_and_is_recorded(local_store):
    kind = local_store.kind(KIND)
    for name in ("v001", "v002"):
        make_version(kind, name)
        kind.publish(name, reason="build")
    result = kind.rollback_to("v001", reason="recall dropped", run_id="manual")
    assert result.moved and kind.latest() == "v001"
    last = kind.history()[-1]
    assert (last.action, last.from_version, last.to_version, last.reason) == (
        "rollback",
        "v002",
        "v001",
        "recall dropped",
    )


def test_rollback_refuses_unknown_and_incomplete_versions(local_store):
    kind = local_store.kind(KIND)
    make_version(kind, "v001")
    kind.publish("v001", reason="build")
    with pytest.raises(UnknownVersionError, match=r"no version 'v999' \(newest complete: v001\)"):
        kind.rollback_to("v999", reason="typo")
    partial = kind.new_version("v002")
    partial.add_bytes("index.hnsw", b"half")  # never committed: no manifest
    with pytest.raises(IncompleteVersionError, match="no MANIFEST.json"):
        kind.rollback_to("v002", reason="not finished")
    with pytest.raises(IncompleteVersionError):
        kind.publish("v002", reason="not finished")
    assert kind.latest() == "v001"
    assert [(v.name, v.complete) for v in kind.versions()] == [("v001", True), ("v002", False)]


@pytest.mark.parametrize(
    "bad", ["../v1", "v1/../../etc", "a/b", "..", ".hidden", "", "LATEST", "MANIFEST.json", "x" * 129, "a b", "v1\n"]
)
def test_path_tricks_in_version_names_are_refused(local_store, bad):
    kind = local_store.kind(KIND)
    for operation in (kind.manifest, kind.is_complete, lambda v: kind.rollback_to(v, reason="x"), kind.new_version):
        with pytest.raises(InvalidNameError):
            operation(bad)


@pytest.mark.parametrize("bad", ["../x", "/etc/passwd", "a/../b", "MANIFEST.json", ".secret", "a//b"])
def test_path_tricks_in_file_names_are_refused(local_store, bad):
    writer = local_store.kind(KIND).new_version("v001")
    with pytest.raises(InvalidNameError):
        writer.add_bytes(bad, b"x")


@pytest.mark.parametrize("bad", ["Indexes/stories", "../indexes", "indexes//stories", "", "indexes/sto ries"])
def test_bad_kind_names_are_refused(local_store, bad):
    with pytest.raises(InvalidNameError):
        local_store.kind(bad)


@pytest.mark.parametrize("damage", ["truncate", "alter", "delete"])
def test_a_damaged_file_is_detected_on_read(local_store, tmp_path, damage):
    kind = local_store.kind(KIND)
    make_version(kind, "v001", payload=b"0123456789" * 100)
    path = local_store.backend.local_path(kind.file_key("v001", "index.hnsw"))
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:-10])
    elif damage == "alter":
        data = bytearray(path.read_bytes())
        data[500] ^= 0xFF  # same size, one byte flipped
        path.write_bytes(bytes(data))
    else:
        path.unlink()
    with pytest.raises(CorruptArtifactError, match="index.hnsw"):
        kind.verify("v001")
    with pytest.raises((CorruptArtifactError, FileNotFoundError)):
        kind.read_file("v001", "index.hnsw")
    with pytest.raises((CorruptArtifactError, FileNotFoundError)):
        kind.download("v001", tmp_path / "cache")
    with pytest.raises(CorruptArtifactError):
        kind.rollback_to("v001", reason="would serve a damaged file")


def test_download_verifies_and_reuses_a_good_cache(local_store, tmp_path):
    kind = local_store.kind(KIND)
    make_version(kind, "v001")
    target = kind.download("v001", tmp_path / "cache")
    assert (target / "index.hnsw").read_bytes() == b"vectors"
    assert (target / "ids" / "part-0.txt").read_bytes() == b"s1\ns2\n"
    assert (target / MANIFEST).is_file()
    before = (target / "index.hnsw").stat().st_mtime_ns
    kind.download("v001", tmp_path / "cache")
    assert (target / "index.hnsw").stat().st_mtime_ns == before  # verified, not re-copied


def test_retention_keeps_the_newest_and_whatever_latest_names(local_store):
    kind = local_store.kind(KIND)
    names = [f"v00{i}" for i in range(1, 6)]
    for name in names:
        make_version(kind, name)
        kind.publish(name, reason="build")
    kind.rollback_to("v001", reason="bad model in v002..v005")
    preview = kind.retain(2, dry_run=True)
    assert preview.deleted == ["v002", "v003"] and kind.complete_versions() == names
    report = kind.retain(2)
    assert report.deleted == ["v002", "v003"]
    assert kind.complete_versions() == ["v001", "v004", "v005"]
    assert kind.latest() == "v001"
    kind.verify("v001")
    with pytest.raises(UnknownVersionError):
        kind.manifest("v002")


def test_retention_removes_abandoned_incomplete_versions_after_the_grace_period(local_store):
    kind = local_store.kind(KIND)
    make_version(kind, "v001")
    kind.publish("v001", reason="build")
    abandoned = kind.new_version("v000-crashed")
    abandoned.add_bytes("index.hnsw", b"half")
    assert kind.retain(5).deleted == []  # young: may still be being written
    old = time.time() - 48 * 3600
    path = local_store.backend.local_path(f"{abandoned.staging}/index.hnsw")
    os.utime(path, (old, old))
    assert kind.retain(5).deleted == ["v000-crashed"]
    assert [v.name for v in kind.versions()] == ["v001"]


def test_version_names_sort_by_time_and_say_what_made_them():
    from datetime import UTC, datetime

    early = version_name("ebr_story_index scheduled__2026-11-23T10:00:00+00:00", datetime(2026, 11, 23, 10, tzinfo=UTC))
    late = version_name(
        "ebr_story_index scheduled__2026-11-23T10:30:00+00:00", datetime(2026, 11, 23, 10, 30, tzinfo=UTC)
    )
    assert early == "20261123T100000Z-ebr_story_index-scheduled__2026-11-23T10-00-00+00-00"
    assert early < late
    assert version_name("x", datetime(2026, 1, 1, tzinfo=UTC)) == version_name("x", datetime(2026, 1, 1, tzinfo=UTC))


def test_store_lists_kinds_with_versions(local_store):
    make_version(local_store.kind("indexes/stories"), "v001")
    make_version(local_store.kind("embeddings/users"), "v001")
    assert local_store.kinds() == ["embeddings/users", "indexes/stories"]
