"""Naming versions without typing 70 characters: `previous`, unique prefixes (ArtifactKind.resolve),
and reads that leave an empty root empty."""

from __future__ import annotations

import pytest

from artifacts import AmbiguousVersionError, ArtifactStore, InvalidNameError, UnknownVersionError

NAMES = (
    "20261015T000000Z-ebr_story_index-scheduled__2026-10-15T00-00-00-00-00",
    "20261015T003000Z-ebr_story_index-scheduled__2026-10-15T00-30-00-00-00",
    "20261016T000000Z-ebr_story_index-manual__2026-12-01T10-47-08.959219+00-00",
)


def write(kind, name: str, *, publish: bool = True) -> None:
    with kind.new_version(name, parents={"model_version": "m1"}) as v:
        v.add_bytes("index.hnsw", name.encode())
    if publish:
        kind.publish(name, reason="build")


@pytest.fixture
def kind(tmp_path):
    kind = ArtifactStore.open(f"file://{tmp_path}/root").kind("indexes/stories")
    for name in NAMES:
        write(kind, name)
    return kind


def test_a_unique_prefix_names_its_version_and_a_full_name_wins_over_a_longer_one(kind):
    assert kind.resolve("20261015T0030") == NAMES[1]
    assert kind.resolve("20261016") == NAMES[2]
    assert kind.resolve(NAMES[0]) == NAMES[0]
    write(kind, "v1")
    write(kind, "v10")
    assert kind.resolve("v1") == "v1"  # exact, though "v10" starts with it too
    assert kind.resolve("v10") == "v10"


def test_an_ambiguous_prefix_lists_the_newest_candidates_in_one_short_line(kind):
    with pytest.raises(AmbiguousVersionError) as err:
        kind.resolve("2026101")
    message = str(err.value)
    assert "'2026101' matches 3 versions" in message and "type more of the name" in message
    assert message.index(NAMES[2]) < message.index(NAMES[1]) < message.index(NAMES[0])  # newest first
    for name in ("20261017T000000Z-a", "20261018T000000Z-b"):
        write(kind, name)
    message = str(pytest.raises(AmbiguousVersionError, kind.resolve, "2026101").value)
    assert "matches 5 versions" in message and "and 2 more" in message and NAMES[0] not in message
    assert len(message) < 300


def test_an_unknown_name_lists_the_three_newest_complete_versions_newest_first(kind):
    for name in ("20261017T000000Z-a", "20261018T000000Z-b"):
        write(kind, name)
    message = str(pytest.raises(UnknownVersionError, kind.resolve, "nope").value)
    assert message == (
        "indexes/stories has no version 'nope' (newest complete: 20261018T000000Z-b, 20261017T000000Z-a, "
        f"{NAMES[2]} (and 2 older))"
    )
    assert "newest complete: 20261018T000000Z-b" in str(pytest.raises(UnknownVersionError, kind.manifest, "nope").value)
    with pytest.raises(InvalidNameError):
        kind.resolve("../LATEST")


def test_previous_is_the_version_published_before_latest_and_repeats_backwards(kind):
    assert kind.resolve("previous") == NAMES[1]
    assert kind.rollback_to("previous", reason="bad").latest == NAMES[1]
    assert kind.rollback_to("previous", reason="worse").latest == NAMES[0]  # not back to NAMES[2]
    with pytest.raises(UnknownVersionError, match="no previous one"):
        kind.rollback_to("previous", reason="again")
    assert kind.latest() == NAMES[0]


def test_previous_skips_a_version_that_was_written_but_never_published(kind):
    write(kind, "20261017T000000Z-unpublished", publish=False)
    write(kind, "20261018T000000Z-next")
    assert kind.resolve("previous") == NAMES[2]


def test_previous_needs_a_latest(tmp_path):
    kind = ArtifactStore.open(f"file://{tmp_path}/root").kind("indexes/stories")
    write(kind, "v1", publish=False)
    with pytest.raises(UnknownVersionError, match="no LATEST yet"):
        kind.resolve("previous")


def test_rollback_to_a_prefix_records_the_full_name_and_an_ambiguous_one_moves_nothing(kind):
    with pytest.raises(AmbiguousVersionError):
        kind.rollback_to("20261015T00", reason="bad")  # NAMES[0] and NAMES[1]
    assert kind.latest() == NAMES[2]
    assert kind.rollback_to("20261015T0000", reason="bad").latest == NAMES[0]
    assert kind.history()[-1].to_version == NAMES[0]


def test_reading_pointers_and_listing_an_empty_root_writes_nothing(tmp_path):
    root = tmp_path / "root"
    store = ArtifactStore.open(f"file://{root}")
    kind = store.kind("indexes/stories")
    assert kind.latest() is None and kind.versions() == [] and store.kinds() == [] and kind.history() == []
    assert not root.exists()
    root.mkdir()
    assert kind.latest() is None
    assert list(root.iterdir()) == []


def test_reading_a_pointer_takes_no_new_file_once_published(kind, tmp_path):
    folder = tmp_path / "root" / "indexes" / "stories"
    before = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    assert kind.latest() == NAMES[2]
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == before
