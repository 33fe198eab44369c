"""A published index version loaded for serving: verified, read-only, thread-safe.

A version of `indexes/<collection>` holds:

    index.hnsw      hnswlib graph + vectors, space "ip"; label i is row i of ids.parquet
    ids.parquet     one string column "id"; null where a label's item was deleted
                    (an incremental build marks expired and moved items deleted and
                    inserts new and moved ones under fresh labels, see `index_builder.builder`)
    MANIFEST.json   sizes and sha256 of both files, parents, params (dim, count, ef_search, ...)

hnswlib itself checks almost nothing on load: a file of another dimension loads silently
(its vectors read back with plausible norms, since the neighbouring bytes are small
integers), and `load_index` on an index that is serving destroys it. So `load_index` here
checks sizes and checksums against the manifest, reads the dimension from the file's
own header and compares it and the count with the manifest, always loads into a *new*
`hnswlib.Index`, and finally asks the index for a few of its own vectors and expects
them back as their own nearest neighbours; only then does the caller get an object to
swap in.
"""

from __future__ import annotations

import struct
import sys
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from artifacts.errors import CorruptArtifactError
from artifacts.kinds import INDEX_PREFIX
from artifacts.manifest import Manifest, check_entry, sha256_stream
from artifacts.names import MANIFEST

INDEX_FILE = "index.hnsw"
IDS_FILE = "ids.parquet"
SPACE = "ip"
ID_COLUMN = "id"

# Self-check after load: this many stored vectors must come back as their own best match.
_SELF_CHECK_PROBES = 16
# Stored vectors are L2-normalised; altered bytes in the vector region change their norms.
_NORM_TOLERANCE = 1e-2


@dataclass(frozen=True)
class GraphHeader:
    """The fixed-size header hnswlib writes at the start of a saved index (hnswalg.h, saveIndex)."""

    max_elements: int
    element_count: int
    bytes_per_element: int
    label_offset: int
    data_offset: int
    max_m0: int
    m: int

    @property
    def dim(self) -> int:
        # The vector sits between the data offset and the label: dim float32 values.
        return (self.label_offset - self.data_offset) // 4


# offsetLevel0, max_elements, cur_element_count, size_data_per_element, label_offset,
# offsetData (size_t); maxlevel (int); enterpoint (uint); maxM, maxM0, M (size_t);
# mult (double); ef_construction (size_t).
_HEADER = struct.Struct("<6Q i I 3Q d Q")


def read_header(path: Path) -> GraphHeader:
    """Reads a saved index's header; hnswlib itself trusts the dimension it is given."""
    with Path(path).open("rb") as f:
        raw = f.read(_HEADER.size)
    if len(raw) < _HEADER.size:
        raise CorruptArtifactError(f"{path}: {len(raw)} bytes, shorter than an hnswlib header")
    _, max_elements, count, per_element, label_offset, data_offset, _, _, _, max_m0, m, _, _ = _HEADER.unpack(raw)
    return GraphHeader(max_elements, count, per_element, label_offset, data_offset, max_m0, m)


def read_level0(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Every slot's label and stored vector, read straight from a saved index file.

    hnswlib's `get_items` copies vectors one by one through Python (about 9 us each, 9 s
    for a million); the level-0 block after the header holds them at fixed offsets, so a
    memory map reads them at disk speed. Deleted slots are included.

    Returns:
      labels [slots] int64 and vectors [slots, dim] float32 (a read-only memory map).
    """
    header = read_header(path)
    block = np.memmap(
        path, dtype=np.uint8, mode="r", offset=_HEADER.size, shape=(header.element_count, header.bytes_per_element)
    )
    vectors = block[:, header.data_offset : header.label_offset].view(np.float32)
    labels = block[:, header.label_offset : header.label_offset + 8].view(np.uint64)[:, 0].astype(np.int64)
    return labels, vectors


def read_ids(path: Path) -> np.ndarray:
    """The label -> id map of `ids.parquet`: [labels] object array, None for dead labels."""
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    if table.column_names != [ID_COLUMN]:
        raise CorruptArtifactError(f"{path}: columns {table.column_names}, expected exactly [{ID_COLUMN!r}]")
    return np.asarray(table[ID_COLUMN].to_pylist(), dtype=object)


def write_ids(path: Path, labels_to_ids: np.ndarray) -> None:
    """Writes the label -> id map (row i = label i; None marks a dead label)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({ID_COLUMN: pa.array(list(labels_to_ids), type=pa.string())}), path, compression="zstd")


def verify_files(directory: Path, manifest: Manifest, *, checksums: bool = True) -> None:
    """Checks that the index files exist with the manifest's sizes (and sha256 when `checksums`).

    Raises:
      CorruptArtifactError: a file is missing, truncated or altered.
    """
    shards = manifest.params.get("shards", 1)
    if shards != 1 and INDEX_FILE not in manifest.files:
        raise CorruptArtifactError(
            f"{directory}: {manifest.kind}/{manifest.version} is a set of {shards} shards (index.shards); "
            f"serve it with `ebr serve --shard I/{shards}` behind `ebr route`, not as one index"
        )
    for name in (INDEX_FILE, IDS_FILE):
        if name not in manifest.files:
            raise CorruptArtifactError(
                f"{directory}: the manifest lists no {name}; this is not an index version "
                f"(files: {', '.join(sorted(manifest.files))})"
            )
    for name, entry in manifest.files.items():
        path = directory / name
        if not path.is_file():
            raise CorruptArtifactError(f"{path} is listed in the manifest but missing; download the version again")
        if checksums:
            with path.open("rb") as f:
                size, digest = sha256_stream(f)
        else:  # size only: cheap, and catches truncation
            size, digest = path.stat().st_size, entry.sha256
        check_entry(str(path), entry, size, digest)


class LoadedIndex:
    """One index version in memory, immutable after load.

    `search`, `vector` and `in` may be called from many threads at once: hnswlib's
    `knn_query` releases the GIL and only reads the graph, `ef` is set once at load, and
    nothing here is mutated afterwards.

    Attributes:
      collection: "stories", "creators" or "users".
      version: the version name in `indexes/<collection>`.
      manifest: the version's manifest.
      model_version: the model whose tower made the vectors (`parents.model_version`).
      dim: vector dimension.
      count: number of live items (deleted labels excluded).
      ef: the HNSW search breadth used (`params.ef_search`, validated at build time).
      memory_bytes: approximate resident size of the graph, vectors and id map.
    """

    def __init__(self, *, collection: str, manifest: Manifest, index, labels_to_ids: np.ndarray):
        self.collection = collection
        self.version = manifest.version
        self.manifest = manifest
        self.model_version = manifest.parents.get("model_version", "")
        self.dim = int(index.dim)
        self.ef = int(index.ef)
        self._index = index
        # A list, not the object array: a search indexes it with Python ints once per hit,
        # and a list does that ~20x faster than numpy's object getitem (~0.7 us each: 5% of
        # an index process's time at 200k stories, py-spy under a closed loop).
        self._ids: list[str | None] = labels_to_ids.tolist()
        self._labels = {item_id: label for label, item_id in enumerate(self._ids) if item_id is not None}
        self.count = len(self._labels)
        self.memory_bytes = _index_memory_bytes(index) + _id_map_bytes(labels_to_ids, self._labels)

    def __repr__(self) -> str:
        return f"LoadedIndex({self.collection}/{self.version}, {self.count} items, dim {self.dim}, ef {self.ef})"

    def __contains__(self, item_id: str) -> bool:
        return item_id in self._labels

    def __len__(self) -> int:
        return self.count

    def vector(self, item_id: str) -> np.ndarray | None:
        """The stored vector [dim] float32 of `item_id`, or None if the index does not hold it."""
        label = self._labels.get(item_id)
        if label is None:
            return None
        return np.asarray(self._index.get_items([label], return_type="numpy"), dtype=np.float32)[0]

    def search(self, queries: np.ndarray, k: int, exclude: Collection[str] = ()) -> list[list[tuple[str, float]]]:
        """Top-k items by inner product for each query.

        Args:
          queries: [q, dim] float32, L2-normalised (a single [dim] vector is accepted too).
          k: results wanted per query (fewer come back only if the index holds fewer items).
          exclude: ids never returned (e.g. stories the user has seen).

        Returns:
          Per query, up to k (id, inner product) pairs, best first.
        """
        queries, excluded, fetch = self._prepare(queries, k, exclude)
        if fetch == 0:
            return [[] for _ in range(len(queries))]
        labels, scores = self._knn_lists(queries, fetch)
        return [self._hits(row, score, k, excluded) for row, score in zip(labels, scores, strict=True)]

    def search_many(
        self, searches: Sequence[tuple[np.ndarray, int, Collection[str]]]
    ) -> list[list[list[tuple[str, float]]]]:
        """`search` for each (queries, k, exclude) of SEARCHES, with the same answers, in as
        few hnswlib calls as the answers allow.

        hnswlib searches its base layer with max(ef, k) candidates and returns the best k of
        them, so for any k <= ef the best k of a deeper answer *is* the k-answer: single
        queries whose fetch (k plus their excluded ids) is at most ef go as one `knn_query`
        with the deepest of their fetches. That saves the per-call work (the checks here,
        the binding's array conversions and result allocation): 16 single queries at
        200k x 128 took ~20 us less a query together than as 16 `search` calls (~200 us
        each), work an index process answering pipelined requests pays per request. A
        search that does not qualify runs on its own. A bad search raises before any runs,
        as `search` would.
        """
        prepared = [self._prepare(queries, k, exclude) for queries, k, exclude in searches]
        answers: list[list[list[tuple[str, float]]] | None] = [None] * len(prepared)
        together = [i for i, (queries, _, fetch) in enumerate(prepared) if len(queries) == 1 and 0 < fetch <= self.ef]
        if len(together) > 1:
            stacked = np.concatenate([prepared[i][0] for i in together])
            labels, scores = self._knn_lists(stacked, max(prepared[i][2] for i in together))
            for row, i in enumerate(together):
                answers[i] = [self._hits(labels[row], scores[row], searches[i][1], prepared[i][1])]
        for i, answer in enumerate(answers):
            if answer is None:
                answers[i] = self.search(*searches[i])
        return answers

    def search_stacked(self, queries: np.ndarray, ks: Sequence[int]) -> tuple[list[int], list[str], np.ndarray] | None:
        """The answers of `search(queries[i:i + 1], ks[i])` for every row i of a stack of
        single queries without exclusions, flattened rather than as lists of pairs: how many
        hits each row has, all the hits' ids (row 0's, then row 1's, ...), and their inner
        products as one float32 array in the same order. An index process sends these on as
        bytes (`serving.searcher`, where the measured cost of the pickled pairs is).

        None when the shortcut does not apply and `search_many` must answer: a wrong shape, a
        k outside 1..ef (one deeper search stands for shallower ones only up to ef, see
        `search_many`), an empty index, or a row that found fewer than it asked for.
        """
        if queries.ndim != 2 or queries.shape[1] != self.dim or len(queries) != len(ks) or not ks or not self.count:
            return None
        deepest = max(ks)
        if min(ks) < 1 or deepest > self.ef:
            return None
        fetch = min(deepest, self.count)
        labels, distances = self._knn(np.ascontiguousarray(queries, dtype=np.float32), fetch)
        if labels[:, -1].min() < 0:  # -1 pads the tail of a row that found fewer than fetch
            return None
        scores = 1.0 - distances  # hnswlib's "ip" distance is 1 - <q, v>, float32 as in `search`
        counts = [min(k, fetch) for k in ks]
        if min(counts) < fetch:  # rows that asked for fewer than the deepest: their first hits
            keep = np.arange(fetch) < np.asarray(counts)[:, None]
            labels, scores = labels[keep], scores[keep]
        ids = self._ids
        return counts, [ids[label] for label in labels.ravel().tolist()], scores.ravel()

    def item_ids(self) -> list[str]:
        """Every id the index holds (in label order)."""
        return [item_id for item_id in self._ids if item_id is not None]

    def _prepare(self, queries: np.ndarray, k: int, exclude: Collection[str]) -> tuple[np.ndarray, set, int]:
        """Checks a search; returns its [q, dim] float32 queries, the labels it excludes and
        how many neighbours to fetch (0: nothing to search)."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if queries.ndim == 1:
            queries = queries[None, :]
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise ValueError(f"queries must be [q, {self.dim}], got {queries.shape}")
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        if len(queries) == 0 or self.count == 0:
            return queries, set(), 0
        # Over-fetch by the number of excluded ids the index holds, then filter: exact, and
        # much cheaper than hnswlib's `filter=` callback, which takes the GIL per visited node.
        excluded = {self._labels[i] for i in exclude if i in self._labels} if exclude else set()
        return queries, excluded, min(k + len(excluded), self.count)

    def _hits(self, labels: list[int], scores: list[float], k: int, excluded: set) -> list[tuple[str, float]]:
        """The best k (id, inner product) of one query's fetched neighbours, excluded labels skipped."""
        ids = self._ids
        if not excluded and labels[-1] >= 0:  # the plain case: nothing to skip (-1 pads only the tail)
            return [(ids[label], score) for label, score in zip(labels[:k], scores[:k], strict=True)]
        hits = []
        for label, score in zip(labels, scores, strict=True):
            if label < 0 or label in excluded:
                continue
            hits.append((ids[label], score))
            if len(hits) == k:
                break
        return hits

    def _knn_lists(self, queries: np.ndarray, k: int) -> tuple[list[list[int]], list[list[float]]]:
        """`_knn` as Python lists, converted once for all rows: labels and inner products."""
        labels, distances = self._knn(queries, k)
        # hnswlib's "ip" distance is 1 - <q, v> (float32, so the score is computed in float32)
        return labels.tolist(), (1.0 - distances).tolist()

    def _knn(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return knn_padded(self._index, queries, k, threads=1)


def knn_padded(index, queries: np.ndarray, k: int, *, threads: int) -> tuple[np.ndarray, np.ndarray]:
    """hnswlib `knn_query` that pads with label -1 (distance inf) where fewer than k are found.

    hnswlib refuses a whole batch when one query finds fewer than k live items (possible
    with many deleted labels or a sparse graph); those rows are answered one by one.

    Returns:
      labels [q, k] int64 and distances [q, k] float32 (1 - inner product).
    """
    try:
        return index.knn_query(queries, k=k, num_threads=threads)
    except RuntimeError:
        labels = np.full((len(queries), k), -1, dtype=np.int64)
        distances = np.full((len(queries), k), np.inf, dtype=np.float32)
        for row, query in enumerate(queries):
            for kk in range(k, 0, -1):
                try:
                    got_labels, got_distances = index.knn_query(query[None], k=kk, num_threads=1)
                except RuntimeError:
                    continue
                labels[row, :kk], distances[row, :kk] = got_labels[0], got_distances[0]
                break
        return labels, distances


def load_index(directory: Path, collection: str | None = None, *, verify: bool = True) -> LoadedIndex:
    """Loads a downloaded index version (the output of `ArtifactKind.download`).

    Args:
      directory: folder with `index.hnsw`, `ids.parquet` and `MANIFEST.json`.
      collection: the expected collection ("stories", ...); None accepts the manifest's.
      verify: check every file's sha256 against the manifest (sizes are always checked).
        Pass False only for files `ArtifactKind.download` has just verified.

    Raises:
      CorruptArtifactError: a file is missing, truncated or altered, the manifest is of
        another kind, or the loaded index disagrees with its manifest (dimension, count,
        or stored vectors that do not come back as their own nearest neighbours).
    """
    import hnswlib

    directory = Path(directory)
    manifest_path = directory / MANIFEST
    if not manifest_path.is_file():
        raise CorruptArtifactError(f"{directory} has no {MANIFEST}: not a complete version; download it again")
    manifest = Manifest.from_json(manifest_path.read_bytes(), str(manifest_path))
    if not manifest.kind.startswith(INDEX_PREFIX):
        raise CorruptArtifactError(f"{directory} holds a version of {manifest.kind}, not of indexes/<collection>")
    found_collection = manifest.kind[len(INDEX_PREFIX) :]
    if collection is not None and found_collection != collection:
        raise CorruptArtifactError(f"{directory} is an index of {found_collection!r}, expected {collection!r}")
    verify_files(directory, manifest, checksums=verify)

    params = manifest.params
    try:
        dim, count, ef = int(params["dim"]), int(params["count"]), int(params["ef_search"])
    except (KeyError, TypeError, ValueError) as err:
        raise CorruptArtifactError(f"{manifest_path}: params need dim, count and ef_search ({err})") from None
    if params.get("space", SPACE) != SPACE:
        raise CorruptArtifactError(f"{manifest_path}: space {params.get('space')!r}, this reader serves {SPACE!r}")

    header = read_header(directory / INDEX_FILE)
    if header.dim != dim:
        raise CorruptArtifactError(
            f"{directory / INDEX_FILE} holds {header.dim}-d vectors, the manifest says dim={dim}; "
            "the file belongs to another version or was altered; roll back or rebuild"
        )
    labels_to_ids = read_ids(directory / IDS_FILE)
    index = hnswlib.Index(space=SPACE, dim=dim)  # always a new object: loading over a live one destroys it
    try:
        index.load_index(str(directory / INDEX_FILE))
    except RuntimeError as err:
        raise CorruptArtifactError(
            f"{directory / INDEX_FILE}: hnswlib cannot read it ({err}); roll back or rebuild"
        ) from None
    index.set_ef(ef)
    index.set_num_threads(1)
    loaded = LoadedIndex(collection=found_collection, manifest=manifest, index=index, labels_to_ids=labels_to_ids)
    _check_consistency(loaded, index, labels_to_ids, count, directory)
    return loaded


def _check_consistency(loaded: LoadedIndex, index, labels_to_ids: np.ndarray, count: int, directory: Path) -> None:
    """Refuses an index whose contents disagree with its manifest and id map."""
    where = str(directory / INDEX_FILE)
    if loaded.count != count:
        raise CorruptArtifactError(f"{directory / IDS_FILE}: {loaded.count} live ids, manifest says count={count}")
    if index.element_count > len(labels_to_ids) or index.element_count < count:
        raise CorruptArtifactError(
            f"{where}: {index.element_count} slots for {len(labels_to_ids)} labels and {count} live items; "
            "the index and its id map do not belong together"
        )
    if count == 0:
        return
    live_labels = np.flatnonzero(np.not_equal(labels_to_ids, None))
    probes = live_labels[np.linspace(0, len(live_labels) - 1, min(_SELF_CHECK_PROBES, len(live_labels))).astype(int)]
    try:
        vectors = np.asarray(index.get_items(probes, return_type="numpy"), dtype=np.float32)
    except RuntimeError as err:
        raise CorruptArtifactError(f"{where}: live labels missing from the graph ({err})") from None
    norms = np.linalg.norm(vectors, axis=1)
    if not np.all(np.isfinite(vectors)) or np.any(np.abs(norms - 1.0) > _NORM_TOLERANCE):
        raise CorruptArtifactError(
            f"{where}: stored vectors read back with norms {np.round(norms[:4], 3).tolist()}..., expected 1.0; "
            f"the file does not hold {loaded.dim}-d normalised vectors (wrong dimension or altered)"
        )
    found, distances = knn_padded(index, vectors, 1, threads=1)
    own = 1.0 - np.einsum("ij,ij->i", vectors, vectors)
    # A probe must come back itself, or an item exactly as close (a duplicate vector).
    misses = (found[:, 0] != probes) & (distances[:, 0] > own + 1e-5)
    if misses.sum() > len(probes) // 4:
        raise CorruptArtifactError(
            f"{where}: {int(misses.sum())} of {len(probes)} stored vectors are not found as their own "
            "nearest neighbour; the graph is damaged; roll back or rebuild"
        )


def _index_memory_bytes(index) -> int:
    """Approximate hnswlib memory: vectors + level-0 links per slot, plus upper levels."""
    per_slot = index.dim * 4 + (2 * index.M + 1) * 4 + 8  # data, links (maxM0 = 2M) with count, label
    upper = index.element_count * (index.M + 1) * 4 // max(index.M - 1, 1)  # ~1/M of nodes per level
    return int(index.max_elements * per_slot + upper)


def _id_map_bytes(labels_to_ids: np.ndarray, labels: dict[str, int]) -> int:
    """Approximate size of the label -> id array and the id -> label dict."""
    sample = [i for i in labels_to_ids[:1000] if i is not None]
    per_str = (sum(sys.getsizeof(s) for s in sample) / len(sample)) if sample else 0
    return int(labels_to_ids.nbytes + len(labels) * per_str + sys.getsizeof(labels))
