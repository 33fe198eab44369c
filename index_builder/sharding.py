"""Shard sets: one index version made of S hnswlib indexes over a stable hash partition.

With `index.shards = S > 1` a version of `indexes/<collection>` holds

    shard-0000-of-0002/index.hnsw    the graph of the ids with crc32(id) % S == 0
    shard-0000-of-0002/ids.parquet   its label -> id map (as in an unsharded version)
    shard-0001-of-0002/...           the same for shard 1
    MANIFEST.json                    every shard's files with size and sha256; params.shards = S,
                                     params.shard_counts = [items per shard], params.ef_search
                                     (one ef for the whole set: validated on the merged answer)

and one LATEST moves for the whole set, so a version name *is* a shard-set generation: a
router merges only answers that name the same version. With S = 1 (the default) nothing
of this applies: a version is `index.hnsw` + `ids.parquet` at its top level, as before.

The partition is `zlib.crc32(id.encode("utf-8")) % S`: stable across processes, machines
and Python versions (unlike `hash()`, which is salted per process), cheap (about 0.2 us
per id), and even enough for ids that differ only in their digits. Changing S moves
almost every id, so an index built with another S is never updated incrementally.

A shard server downloads only its shard (`download_shard`) into a folder laid out like an
unsharded version, with a manifest derived from the set's (`shard_manifest`), so the
verified loader (`load_index`) and the index process load a shard unchanged.
"""

from __future__ import annotations

import heapq
import re
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from artifacts.embedding_snapshots import EmbeddingSnapshot
from artifacts.errors import CorruptArtifactError
from artifacts.manifest import Manifest
from artifacts.names import MANIFEST
from artifacts.store import ArtifactKind
from index_builder.loaded_index import IDS_FILE, INDEX_FILE

SHARD_HASH = "crc32"
_SPEC = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


class ShardMismatchError(CorruptArtifactError):
    """A version's shard count is not the one a shard server or router was started for."""


def shard_of(item_id: str, shards: int) -> int:
    """The shard that holds `item_id` in a set of `shards`: crc32 of its UTF-8 bytes mod S."""
    return zlib.crc32(item_id.encode("utf-8")) % shards


def shard_rows(ids: Iterable[str], shards: int) -> np.ndarray:
    """[n] the shard of every id."""
    return np.fromiter((zlib.crc32(i.encode("utf-8")) % shards for i in ids), dtype=np.int64)


def shard_prefix(shard: int, shards: int) -> str:
    return f"shard-{shard:04d}-of-{shards:04d}"


def shard_file(shard: int, shards: int, name: str) -> str:
    return f"{shard_prefix(shard, shards)}/{name}"


def shard_count(manifest: Manifest) -> int:
    """S of a version: params.shards, 1 for an unsharded version (no such param)."""
    try:
        shards = int(manifest.params.get("shards", 1))
    except (TypeError, ValueError):
        raise CorruptArtifactError(
            f"{manifest.kind}/{manifest.version}: params.shards={manifest.params.get('shards')!r}"
        ) from None
    if shards < 1:
        raise CorruptArtifactError(f"{manifest.kind}/{manifest.version}: params.shards={shards}, must be at least 1")
    return shards


def parse_shard_spec(spec: str) -> tuple[int, int]:
    """ "I/S" -> (I, S), for `ebr serve --shard`.

    Raises:
      ValueError: not two whole numbers, S < 1, or I outside 0..S-1.
    """
    match = _SPEC.fullmatch(spec or "")
    if not match:
        raise ValueError(f"--shard {spec!r} must look like I/S (shard I of S, counted from 0), e.g. 0/2")
    shard, shards = int(match.group(1)), int(match.group(2))
    if shards < 1:
        raise ValueError(f"--shard {spec!r}: a set has at least 1 shard")
    if shard >= shards:
        raise ValueError(f"--shard {spec!r}: shards of a set of {shards} are numbered 0 to {shards - 1}")
    return shard, shards


def split_snapshot(snapshot: EmbeddingSnapshot, shards: int) -> list[EmbeddingSnapshot]:
    """The snapshot's rows of each shard, in snapshot order, as snapshots of their own
    (sharing the manifest; `len` is the shard's row count)."""
    which = shard_rows(snapshot.ids, shards)
    parts = []
    for shard in range(shards):
        rows = np.flatnonzero(which == shard)
        parts.append(
            EmbeddingSnapshot(snapshot.ids[rows], np.ascontiguousarray(snapshot.vectors[rows]), snapshot.manifest)
        )
    return parts


def shard_manifest(manifest: Manifest, shard: int) -> Manifest:
    """The manifest of one shard of a set, as an unsharded version's: its two files at the
    top level (sizes and sha256 from the set's manifest), its own count, the set's ef.

    For the local copy a shard server loads; the store keeps only the set's manifest.
    `params.shard` / `params.shards` say which shard it is.
    """
    shards = shard_count(manifest)
    if not 0 <= shard < shards:
        raise ShardMismatchError(f"{manifest.kind}/{manifest.version} has {shards} shard(s); there is no shard {shard}")
    if shards == 1 and INDEX_FILE in manifest.files:
        return manifest
    files = {}
    for name in (INDEX_FILE, IDS_FILE):
        key = shard_file(shard, shards, name)
        if key not in manifest.files:
            raise CorruptArtifactError(f"{manifest.kind}/{manifest.version}: the manifest lists no {key}")
        files[name] = manifest.files[key]
    try:
        count = int(manifest.params["shard_counts"][shard])
    except (KeyError, IndexError, TypeError, ValueError):
        raise CorruptArtifactError(
            f"{manifest.kind}/{manifest.version}: params.shard_counts names no count for shard {shard}"
        ) from None
    params = {**manifest.params, "count": count, "shard": shard, "shards": shards}
    return replace(manifest, files=files, params=params)


def download_shard(kind: ArtifactKind, version: str, shard: int, shards: int, dest: Path) -> Path:
    """Downloads shard `shard` of a set into `dest/<version>/shard-I-of-S/`, every file's
    size and sha256 checked, with the derived manifest written last; returns that folder.

    Files already there with the right checksum are kept (a cache may call this again).

    Raises:
      ShardMismatchError: the version is not a set of `shards` shards.
      CorruptArtifactError: a file does not match the manifest.
    """
    manifest = kind.manifest(version)
    found = shard_count(manifest)
    if found != shards:
        raise ShardMismatchError(
            f"{kind.name}/{version} is a set of {found} shard(s), this server serves shard {shard} of {shards}; "
            f"start it with --shard I/{found}, or rebuild with index.shards={shards}"
        )
    own = shard_manifest(manifest, shard)
    target = Path(dest) / version / shard_prefix(shard, shards)
    # stored name -> the unsharded name the shard server loads it by
    names = {(name if own is manifest else shard_file(shard, shards, name)): name for name in own.files}
    kind.download_files(version, target, names)
    (target / MANIFEST).write_bytes(own.to_json())
    return target


def merge_top_k(answers: Sequence[Sequence[tuple[str, float]]], k: int) -> list[tuple[str, float]]:
    """The k best (id, score) of several shards' answers, best first, each id once.

    Shards hold disjoint ids, so a duplicate only comes from a replica answering twice or a
    set being rebuilt with another partition; the best score of an id is kept. Ties are
    broken by id, so the merge is deterministic whatever order the shards answered in.
    """
    best: dict[str, float] = {}
    for answer in answers:
        for item_id, score in answer:
            if item_id not in best or score > best[item_id]:
                best[item_id] = score
    return heapq.nsmallest(k, best.items(), key=lambda hit: (-hit[1], hit[0]))
