"""Request and response bodies of the retrieval API (they also make the OpenAPI description)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class _Body(BaseModel):
    # Strict: k must be a JSON integer (not 2.0, "5" or true), ids strings, embedding
    # elements numbers (not "0.1" or true); integers stay valid floats.
    model_config = ConfigDict(extra="forbid", strict=True)


class RetrieveRequest(_Body):
    """Top-K of a collection for a user (embedding looked up) or for a given embedding."""

    user_id: str | None = Field(None, description="look the query vector up in the served user embeddings")
    embedding: list[float] | None = Field(
        None, description="or give the query vector itself: `dim` finite floats (L2-normalised for cosine scores)"
    )
    k: int | None = Field(None, description="results wanted, 1..serving.max_k (default serving.default_k)")
    exclude: list[str] = Field(default_factory=list, description="ids never returned, e.g. stories already seen")

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={"examples": [{"user_id": "u000042", "k": 10, "exclude": ["s001234"]}]},
    )


class SimilarRequest(_Body):
    """Items of a collection closest to one of its own items."""

    id: str = Field(description="an id the collection's index holds (it is never returned itself)")
    k: int | None = Field(None, description="results wanted, 1..serving.max_k (default serving.default_k)")
    exclude: list[str] = Field(default_factory=list, description="further ids never returned")


class Hit(BaseModel):
    id: str
    score: float = Field(description="inner product of query and item vectors (cosine for normalised vectors)")


class ServedVersions(BaseModel):
    """Which consistent set answered: the index and user embeddings share `model_version`."""

    generation: int = Field(description="increases at every swap of the served state")
    model_version: str
    index_version: str
    user_embeddings_version: str


class RetrieveResponse(BaseModel):
    collection: str
    k: int
    items: list[Hit]
    served: ServedVersions


class ErrorDetail(BaseModel):
    code: str = Field(description="machine-readable, e.g. unknown_user, invalid_k, not_ready")
    message: str = Field(description="what was wrong, with the value, and what to do")
    details: list[dict] | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


class Readiness(BaseModel):
    ready: bool
    generation: int | None = None
    model_version: str | None = None
    reason: str | None = None


class ComponentInfo(BaseModel):
    version: str
    model_version: str
    served_since: str
    count: int
    dim: int
    memory_bytes: int
    ef: int | None = None
    searcher_pid: int | None = Field(
        None, description="the child process holding this index (serving.searcher=process)"
    )
    searcher_rss_bytes: int | None = None


class StateInfo(BaseModel):
    generation: int
    model_version: str
    dim: int
    since: str
    components: dict[str, ComponentInfo]


class RefusalInfo(BaseModel):
    kind: str
    version: str
    reason: str
    at: str
    cause: str = Field(description='"verification" (the bytes are bad) or "crashes" (serving.max_load_crashes reached)')
    attempts: int = Field(description="failed loads before the refusal (0 for a verification failure)")


class LoadFailureInfo(BaseModel):
    """A version whose loads crashed (not its bytes' fault yet): retried after a backoff."""

    kind: str
    version: str
    failures: int
    last_error: str
    next_attempt_in_s: float


class VersionsResponse(BaseModel):
    ready: bool
    served: StateInfo | None
    last_poll_at: str | None
    seconds_since_last_successful_poll: float
    last_reload: dict[str, str]
    refused: list[RefusalInfo]
    load_failures: list[LoadFailureInfo]
    pointer_errors: dict[str, str] = Field(
        description="kind -> why its LATEST cannot be read (that kind stays as served)"
    )
    retired_states_alive: int
