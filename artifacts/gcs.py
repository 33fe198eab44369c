"""The Google Cloud Storage backend (`gs://bucket/prefix`), on `google-cloud-storage`.

Objects are written whole by the client (single-request or resumable upload, committed
atomically by GCS). The pointer compare-and-swap is GCS's own: every write of an object
gets a new generation number, and `if_generation_match=N` makes a write fail with 412
Precondition Failed unless the object is still at generation N (0: must not exist).
Appends to `HISTORY.jsonl` are read-modify-write loops under the same precondition.

`gcs.endpoint` points the client at an emulator (tests use `gcp-storage-emulator`) with
anonymous credentials; left empty, the client uses real GCS and default credentials.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from google.api_core import exceptions as gexc
from google.cloud import storage

from artifacts.backend import Backend, ObjectInfo
from artifacts.errors import ArtifactError, ArtifactRootError, CorruptArtifactError, PointerConflictError

if TYPE_CHECKING:
    from config import GcsConfig

_APPEND_RETRIES = 50


class GcsBackend(Backend):
    def __init__(self, client: storage.Client, bucket: str, prefix: str = ""):
        self.client = client
        self.bucket = client.bucket(bucket)
        self.prefix = prefix.strip("/")
        self.uri = f"gs://{bucket}/{self.prefix}".rstrip("/")

    @classmethod
    def from_uri(cls, uri: str, gcs: GcsConfig | None = None) -> GcsBackend:
        bucket, _, prefix = uri[len("gs://") :].partition("/")
        if not bucket:
            raise ValueError(f"GCS root {uri!r} has no bucket name")
        return cls(make_client(gcs), bucket, prefix)

    def _name(self, key: str) -> str:
        return self.join(self.prefix, key)

    def _key(self, name: str) -> str:
        return name[len(self.prefix) + 1 :] if self.prefix else name

    def _blob(self, key: str) -> storage.Blob:
        return self.bucket.blob(self._name(key))

    def read_bytes(self, key: str) -> bytes:
        try:
            return self._blob(key).download_as_bytes()
        except gexc.NotFound:
            raise FileNotFoundError(f"{self.uri}/{key}") from None

    @contextmanager
    def open_read(self, key: str) -> Iterator[BinaryIO]:
        # Spooled to disk past 64 MiB, so hashing a large index does not fill memory.
        with tempfile.SpooledTemporaryFile(max_size=64 * 1024 * 1024) as spool:
            try:
                self._blob(key).download_to_file(spool)
            except gexc.NotFound:
                raise FileNotFoundError(f"{self.uri}/{key}") from None
            spool.seek(0)
            yield spool

    def write_bytes(self, key: str, data: bytes) -> None:
        self._blob(key).upload_from_string(data, content_type="application/octet-stream")

    def create_bytes(self, key: str, data: bytes) -> bool:
        try:
            self._blob(key).upload_from_string(data, content_type="application/octet-stream", if_generation_match=0)
        except gexc.PreconditionFailed:
            return False
        return True

    def upload_file(self, key: str, path: Path) -> None:
        self._blob(key).upload_from_filename(str(path))

    def download_file(self, key: str, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._blob(key).download_to_filename(str(path))
        except gexc.NotFound:
            raise FileNotFoundError(f"{self.uri}/{key}") from None

    def exists(self, key: str) -> bool:
        return self._blob(key).exists()

    def list_objects(self, prefix: str) -> Iterator[ObjectInfo]:
        name_prefix = self._name(prefix) + "/"
        for blob in self.client.list_blobs(self.bucket, prefix=name_prefix):
            updated = blob.updated.timestamp() if blob.updated else 0.0
            yield ObjectInfo(self._key(blob.name), int(blob.size or 0), updated)

    def list_children(self, prefix: str) -> list[str]:
        name_prefix = self._name(prefix) + "/"
        pages = self.client.list_blobs(self.bucket, prefix=name_prefix, delimiter="/")
        for _ in pages:  # prefixes are only known once the pages are consumed
            pass
        return sorted(p[len(name_prefix) :].rstrip("/") for p in pages.prefixes)

    def delete(self, key: str) -> None:
        try:
            self._blob(key).delete()
        except gexc.NotFound:
            pass

    def read_pointer(self, key: str) -> tuple[str | None, int]:
        for _ in range(_APPEND_RETRIES):
            blob = self.bucket.get_blob(self._name(key))
            if blob is None:
                return None, 0
            # Read before downloading: a download may reset the blob's properties.
            generation = int(blob.generation)
            try:
                data = blob.download_as_bytes(if_generation_match=generation)
            except gexc.PreconditionFailed:
                continue  # rewritten between the metadata read and the download
            except gexc.NotFound:
                return None, 0
            try:
                return data.decode("utf-8").strip(), generation
            except UnicodeDecodeError:
                raise CorruptArtifactError(
                    f"{self.uri}/{key} is not a UTF-8 version name ({data[:20]!r}...); delete it "
                    "or write a complete version's name into it"
                ) from None
        raise ArtifactError(f"{self.uri}/{key} kept changing while being read")

    def swap_pointer(
        self,
        key: str,
        value: str,
        expected_generation: int,
        log: tuple[str, Callable[[int], str]] | None = None,
    ) -> int:
        blob = self._blob(key)
        try:
            blob.upload_from_string(f"{value}\n", content_type="text/plain", if_generation_match=expected_generation)
        except gexc.PreconditionFailed:
            raise PointerConflictError(f"{self.uri}/{key} moved (expected generation {expected_generation})") from None
        generation = int(blob.generation)
        if log is not None:
            log_key, make_line = log
            self._insert_line(log_key, make_line(generation), generation)
        return generation

    def _insert_line(self, key: str, line: str, generation: int) -> None:
        """Appends a log line, placed before any line of a later pointer generation.

        GCS has no lock to hold across the pointer write and the log write, so two
        publishers may reach the log in the opposite order of their pointer writes; the
        line then goes where its generation (GCS generations only grow) puts it.
        """

        def place(lines: list[bytes]) -> list[bytes]:
            at = len(lines)
            while at > 0 and _line_generation(lines[at - 1]) > generation:
                at -= 1
            return [*lines[:at], f"{line}\n".encode(), *lines[at:]]

        self._rewrite(key, place, "application/jsonl")

    def append_line(self, key: str, line: str) -> None:
        if "\n" in line:
            raise ValueError("a log line must not contain a newline")
        self._rewrite(key, lambda lines: [*lines, f"{line}\n".encode()], "application/jsonl")

    def _rewrite(self, key: str, change: Callable[[list[bytes]], list[bytes]], content_type: str) -> None:
        """Read-modify-write of a line log under a generation precondition, retried."""
        for _ in range(_APPEND_RETRIES):
            blob = self.bucket.get_blob(self._name(key))
            content, generation = b"", 0
            if blob is not None:
                generation = int(blob.generation)
                try:
                    content = blob.download_as_bytes(if_generation_match=generation)
                except (gexc.PreconditionFailed, gexc.NotFound):
                    continue
            try:
                self._blob(key).upload_from_string(
                    b"".join(change(content.splitlines(keepends=True))),
                    content_type=content_type,
                    if_generation_match=generation,
                )
                return
            except gexc.PreconditionFailed:
                continue
        raise ArtifactError(f"could not append to {self.uri}/{key}: too much contention")


def _line_generation(line: bytes) -> int:
    try:
        return int(json.loads(line).get("generation") or 0)
    except (ValueError, AttributeError, TypeError):
        return 0


def make_client(gcs: GcsConfig | None) -> storage.Client:
    if gcs is not None and gcs.endpoint:
        from google.auth.credentials import AnonymousCredentials

        return storage.Client(
            project=gcs.project or "ebr-local",
            credentials=AnonymousCredentials(),
            client_options={"api_endpoint": gcs.endpoint},
        )
    from google.auth.exceptions import DefaultCredentialsError

    try:
        return storage.Client(project=(gcs.project if gcs and gcs.project else None))
    except (DefaultCredentialsError, OSError) as err:
        raise ArtifactRootError(
            f"no Google Cloud credentials for a gs:// root ({str(err).splitlines()[0]}); run "
            "`gcloud auth application-default login` or set GOOGLE_APPLICATION_CREDENTIALS "
            "(or gcs.endpoint for an emulator)"
        ) from None
