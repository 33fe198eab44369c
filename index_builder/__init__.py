"""HNSW indexes (hnswlib) built from embedding snapshots: validated, versioned, published.

Modules:
  publish       build_and_publish_index, rollback_index, retain_indexes: what the CLI
                (`ebr index ...`) and the DAGs call;
  builder       full builds and incremental updates of a previous version;
  validation    the checks a snapshot and a graph pass before anything is published;
  loaded_index  the published format and its verified, read-only loader (`load_index`),
                what the retrieval service swaps in;
  hnsw          pure build and measurement functions (exact search, held-aside queries, recall).

The clustered synthetic vectors the tests and benchmarks build indexes from are
`benchmarks.synthetic_vectors` (benchmark data, not part of the package).
"""
