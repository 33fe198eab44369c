"""`ebr route`: the shard router, the retrieval API over `ebr serve --shard I/S` replicas."""

from __future__ import annotations

from argparse import Namespace

from config import EbrConfig


def add_parser(commands) -> None:
    route = commands.add_parser(
        "route",
        help="run the shard router (the retrieval API over shard servers)",
        description="Answers /v1/retrieve, /v1/similar, /v1/versions, /healthz, /readyz and /metrics like `ebr serve`, "
        "by fanning out to one replica of every shard listed in router.replicas and merging their "
        "top-K; every answer comes from one shard-set version and says its coverage.",
    )
    route.add_argument("--host", help="default: router.host (127.0.0.1)")
    route.add_argument("--port", type=int, help="default: router.port")
    route.add_argument(
        "--replicas",
        metavar="JSON",
        help='shard-server URLs per shard, e.g. \'[["http://127.0.0.1:8101"],["http://127.0.0.1:8102"]]\' '
        "(default: router.replicas)",
    )
    route.set_defaults(handler=run_router)

    profiles = commands.add_parser(
        "profiles",
        help='the router\'s Redis user profile store (router.user_store = "redis")',
        description="Loads a user embedding snapshot into Redis (router.redis_url) under its version, the meta "
        "last, so a router uses it only once it is complete; or deletes an old one.",
    )
    actions = profiles.add_subparsers(dest="action", required=True, metavar="ACTION")
    load = actions.add_parser("load", help="load a user snapshot into Redis (default: the one LATEST names)")
    load.add_argument("--snapshot", help="a complete version of embeddings/users")
    delete = actions.add_parser("delete", help="delete a user snapshot from Redis")
    delete.add_argument("snapshot")
    for sub in (load, delete):
        sub.set_defaults(handler=run_profiles)


def run_router(cfg: EbrConfig, args: Namespace) -> int:
    import json
    import sys

    from serving.router_app import serve_router

    if args.replicas is not None:
        from config import ConfigError

        try:
            cfg = cfg.model_copy(
                update={
                    "router": cfg.router.model_validate(
                        {**cfg.router.model_dump(), "replicas": json.loads(args.replicas)}
                    )
                }
            )
        except (ValueError, ConfigError) as err:
            print(f"error: --replicas: {err}", file=sys.stderr)
            return 2
    if not cfg.router.replicas:
        print(
            "error: no shard replicas: give --replicas '[[\"http://HOST:PORT\", ...], ...]' (one list per shard) "
            "or set router.replicas",
            file=sys.stderr,
        )
        return 2
    host = args.host or cfg.router.host
    port = cfg.router.port if args.port is None else args.port
    print(
        f"routing on http://{host}:{port} over {len(cfg.router.replicas)} shard(s) "
        f"({sum(map(len, cfg.router.replicas))} replicas); root {cfg.root}; Ctrl-C stops",
        flush=True,
    )
    serve_router(cfg, host=host, port=port)
    return 0


def run_profiles(cfg: EbrConfig, args: Namespace) -> int:
    import redis

    from artifacts import USER_EMBEDDINGS, ArtifactStore
    from artifacts.embedding_snapshots import read_snapshot
    from serving import profile_store

    client = redis.Redis.from_url(cfg.router.redis_url)
    try:
        if args.action == "delete":
            deleted = profile_store.delete_snapshot(client, args.snapshot, prefix=cfg.router.redis_prefix)
            print(f"deleted {deleted} user vectors of {args.snapshot} from {cfg.router.redis_url}")
            return 0
        snapshot = read_snapshot(ArtifactStore.from_config(cfg).kind(USER_EMBEDDINGS), args.snapshot)
        count = profile_store.load_snapshot(client, snapshot, prefix=cfg.router.redis_prefix)
        print(
            f"loaded {count} user vectors of embeddings/users/{snapshot.manifest.version} "
            f"(model {snapshot.model_version}) into {cfg.router.redis_url}"
        )
    except redis.exceptions.RedisError as err:
        raise ProfileStoreError(f"Redis at {cfg.router.redis_url}: {err}; is it running (`make redis`)?") from None
    finally:
        client.close()
    return 0


class ProfileStoreError(Exception):
    """Redis could not be reached or refused a write."""


EXPECTED_ERRORS = (ProfileStoreError,)
