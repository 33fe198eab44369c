"""The retrieval service: hot-reloads published indexes and answers top-K over HTTP/JSON.

state.py          ServedState: one frozen, consistent set (story index + user embeddings of
                  one model version, optional creator/user indexes); what a request reads
reloader.py       the poller: LATEST -> download (sha256) -> load a new object -> warm ->
                  swap the one reference; failures keep the old state and are counted
pairing.py        which story index and user embeddings versions may be served together (pure)
loading.py        the reloader's mechanics: download (sha256), open, warm up; the local cache
refusals.py       refused versions and crashed loads (with their backoff), for the reloader
poller.py         the poll thread of the reloader and of a shard server's holder
searcher.py       IndexProcess: an index version held by a child process (serving.searcher=process)
app.py            create_app: assembles the FastAPI app from the pieces below
routes.py         the service's routes (APIRouters): probes, /metrics, /v1/ retrieval and versions
deps.py           the routes' dependencies: serving settings, bearer token (all three apps)
responses.py      JSON answers and error bodies (all three apps)
gatekeeper.py     ASGI middleware: request metrics, body size and time limits (all three apps)
query_checks.py   k and embedding checks (all three apps)
docs.py           /docs from local Swagger UI files
api.py            request/response models (the OpenAPI description)
metrics.py        Prometheus metrics in a registry per service
server.py         build_service(cfg), serve() for `ebr serve`, ServerThread for tests
client.py         RetrievalClient, used by `ebr query`
shard_server.py   `ebr serve --shard I/S`: one shard of every shard set, searched by vector
router.py         Router: follows the store, pins one shard-set version per collection
router_app.py     `ebr route`: the retrieval API over shard servers (build_router, serve_router)
replicas.py       the router's replica pool and health checks
fanout.py         the router's hedged fan-out to every shard and the merge
router_metrics.py the router's Prometheus metrics
profile_store.py  user embeddings in Redis, for the router
"""
