"""benchmarks/index_build.py's builds on a small real input: hnswlib and faiss HNSW report
build speed and the saved index's bytes per vector, and leave no file behind."""

from __future__ import annotations

import pytest

from benchmarks import index_build
from benchmarks.synthetic_vectors import clustered_vectors


@pytest.mark.parametrize("build", [index_build.build_hnswlib, index_build.build_faiss], ids=["hnswlib", "faiss"])
def test_a_build_reports_its_speed_and_size_and_removes_the_saved_file(build, tmp_path):
    vectors = clustered_vectors(300, 8, seed=1)
    index, stats = build(vectors, 8, 40, 1, tmp_path)
    assert index is not None and set(stats) == {"build_seconds", "vectors_per_second", "bytes_per_vector"}
    assert stats["vectors_per_second"] > 0
    # Each vector is 8 float32 (32 bytes) plus its links: more than 32 bytes, well under 1 KiB.
    assert 32 < stats["bytes_per_vector"] < 1024
    assert list(tmp_path.iterdir()) == []
