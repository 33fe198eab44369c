"""The retrieval service: hot-reloads published indexes and answers top-K over HTTP/JSON."""
