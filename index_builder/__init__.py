"""HNSW indexes (hnswlib) built from embedding snapshots: validated, versioned, published.

Modules:
  loaded_index  the published format and its verified, read-only loader (`load_index`),
                what the retrieval service swaps in;
  hnsw          pure build and measurement functions (full build, exact search, recall);
  synthetic     clustered synthetic vectors for tests and benchmarks.
"""
