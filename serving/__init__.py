"""The retrieval service: hot-reloads published indexes and answers top-K over HTTP/JSON.

state.py     ServedState: one frozen, consistent set (story index + user embeddings of
             one model version, optional creator/user indexes); what a request reads
reloader.py  the poller: LATEST -> download (sha256) -> load a new object -> warm ->
             swap the one reference; failures keep the old state and are counted
searcher.py  IndexProcess: an index version held by a child process (serving.searcher=process)
app.py       FastAPI routes, JSON errors, bearer token, body limit, request metrics
api.py       request/response models (the OpenAPI description)
metrics.py   Prometheus metrics in a registry per service
server.py    build_service(cfg), serve() for `ebr serve`, ServerThread for tests
client.py    RetrievalClient, used by `ebr query`
"""
