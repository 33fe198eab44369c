"""The kinds the pipeline's stages exchange, and the collections that have indexes.

The one definition of these names (DESIGN.md, "Artifact store layout"); the trainer,
the Beam jobs, the index builder, the service, the DAGs and the CLI all import them
from here.

    models/two_tower                     the exported towers
    embeddings/<users|stories|creators>  embedding snapshots
    indexes/<stories|creators|users>     HNSW index versions, one kind per collection
"""

from __future__ import annotations

MODELS = "models/two_tower"

# The collections a request can search, in the order the service lists them. The story
# index is the one every served set needs; the creator and user indexes are optional.
COLLECTIONS = ("stories", "creators", "users")
# Every index kind is this prefix and a collection (a loaded index checks its manifest's kind).
INDEX_PREFIX = "indexes/"


def _check_collection(collection: str) -> str:
    if collection not in COLLECTIONS:
        raise ValueError(f"unknown collection {collection!r}; choose one of {', '.join(COLLECTIONS)}")
    return collection


def index_kind(collection: str) -> str:
    """ "indexes/stories" for "stories"; ValueError for a name not in COLLECTIONS."""
    return INDEX_PREFIX + _check_collection(collection)


def snapshot_kind(collection: str) -> str:
    """ "embeddings/stories" for "stories": the snapshots a collection's index is built from."""
    return f"embeddings/{_check_collection(collection)}"


USER_EMBEDDINGS = snapshot_kind("users")
STORY_EMBEDDINGS = snapshot_kind("stories")
CREATOR_EMBEDDINGS = snapshot_kind("creators")
STORY_INDEX = index_kind("stories")
CREATOR_INDEX = index_kind("creators")
USER_INDEX = index_kind("users")
# collection -> its index kind ({"stories": "indexes/stories", ...}).
INDEX_KINDS = {collection: index_kind(collection) for collection in COLLECTIONS}
