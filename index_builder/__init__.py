"""HNSW indexes (hnswlib) built from embedding snapshots: validated, versioned, published."""
