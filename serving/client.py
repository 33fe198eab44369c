"""A small HTTP client of the retrieval service (what `ebr query` uses)."""

from __future__ import annotations

from typing import Any


class ServingClientError(Exception):
    """The service refused a request or could not be reached; the message says which and why."""


class RetrievalClient:
    """Blocking client over one keep-alive connection.

        with RetrievalClient("http://127.0.0.1:8090") as client:
            answer = client.retrieve("stories", user_id="u42", k=10, exclude=["s1"])
            [(hit["id"], hit["score"]) for hit in answer["items"]]  # best first
            answer["served"]["index_version"]  # the versions that answered
            client.similar("stories", "s7", k=5)
            client.versions()

    Errors (the service refused, or cannot be reached) raise ServingClientError with
    the HTTP status, the error code and the service's message.
    """

    def __init__(self, url: str, *, token: str = "", timeout_s: float = 10.0):
        import httpx

        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.url = url.rstrip("/")
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout_s)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> RetrievalClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def retrieve(
        self,
        collection: str,
        *,
        user_id: str | None = None,
        embedding: list[float] | None = None,
        k: int | None = None,
        exclude: list[str] = (),
    ) -> dict[str, Any]:
        """POST /v1/retrieve/<collection>: the top-k of stories, creators or users for a
        user id or an embedding, never an id in `exclude`. For `users` and a user id the
        user itself is excluded too (it is always its own nearest neighbour)."""
        body: dict[str, Any] = {"exclude": list(exclude)}
        if user_id is not None:
            body["user_id"] = user_id
            if collection == "users" and user_id not in body["exclude"]:
                body["exclude"].append(user_id)
        if embedding is not None:
            body["embedding"] = embedding
        if k is not None:
            body["k"] = k
        return self._call("POST", f"/v1/retrieve/{collection}", body)

    def similar(
        self, collection: str, item_id: str, *, k: int | None = None, exclude: list[str] = ()
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"id": item_id, "exclude": list(exclude)}
        if k is not None:
            body["k"] = k
        return self._call("POST", f"/v1/similar/{collection}", body)

    def versions(self) -> dict[str, Any]:
        return self._call("GET", "/v1/versions")

    def _call(self, method: str, path: str, body: dict | None = None) -> dict[str, Any]:
        import httpx

        try:
            response = self._http.request(method, path, json=body)
        except httpx.HTTPError as err:
            raise ServingClientError(
                f"cannot reach the retrieval service at {self.url} ({err}); is `ebr serve` running, and is --url right?"
            ) from None
        try:
            payload = response.json()
        except ValueError:
            raise ServingClientError(
                f"{method} {path}: HTTP {response.status_code}, not JSON: {response.text[:200]}"
            ) from None
        if response.status_code != 200:
            error = payload.get("error", {}) if isinstance(payload, dict) else {}
            raise ServingClientError(
                f"{method} {path}: HTTP {response.status_code} {error.get('code', '')}: {error.get('message', payload)}"
            )
        return payload
