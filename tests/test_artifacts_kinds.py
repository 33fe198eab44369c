"""The one registry of kinds and collections (`artifacts.kinds`), and who reads it."""

import pytest

from artifacts import kinds


def test_index_and_snapshot_kinds_are_named_after_the_collection():
    assert [kinds.index_kind(c) for c in kinds.COLLECTIONS] == ["indexes/stories", "indexes/creators", "indexes/users"]
    assert kinds.snapshot_kind("users") == kinds.USER_EMBEDDINGS == "embeddings/users"
    assert kinds.INDEX_KINDS == {"stories": "indexes/stories", "creators": "indexes/creators", "users": "indexes/users"}
    assert kinds.MODELS == "models/two_tower"


@pytest.mark.parametrize("name", ["story", "indexes/stories", "", "Stories"])
def test_an_unknown_collection_is_refused_with_the_choices(name):
    with pytest.raises(ValueError, match="choose one of stories, creators, users"):
        kinds.index_kind(name)
    with pytest.raises(ValueError, match="unknown collection"):
        kinds.snapshot_kind(name)


def test_every_layer_reads_the_same_registry():
    """The builder, the DAG tasks, the CLI and the service name collections from here,
    so adding one is one edit (they used to keep four copies in step by a test)."""
    from cli import index_commands
    from index_builder import publish
    from orchestration import indexes
    from serving import state

    for module in (publish, indexes, index_commands, state):
        assert module.COLLECTIONS is kinds.COLLECTIONS, module.__name__
    assert publish.index_kind is indexes.index_kind is index_commands.index_kind is kinds.index_kind
    assert state.INDEX_KINDS is kinds.INDEX_KINDS
    assert state.OPTIONAL_INDEXES == {"creators": "indexes/creators", "users": "indexes/users"}
