"""`ebr route`: the shard router, the retrieval API over `ebr serve --shard I/S` replicas."""

from __future__ import annotations

from argparse import Namespace

from config import EbrConfig


def add_parser(commands) -> None:
    route = commands.add_parser(
        "route", help="run the shard router (the retrieval API over shard servers)",
        description="Answers /v1/retrieve, /v1/similar, /v1/versions, /healthz, /readyz and /metrics like `ebr serve`, "
                    "by fanning out to one replica of every shard listed in router.replicas and merging their "
                    "top-K; every answer comes from one shard-set version and says its coverage.",
    )  # fmt: skip
    route.add_argument("--host", help="default: router.host (127.0.0.1)")
    route.add_argument("--port", type=int, help="default: router.port")
    route.add_argument("--replicas", metavar="JSON",
                       help='shard-server URLs per shard, e.g. \'[["http://127.0.0.1:8101"],["http://127.0.0.1:8102"]]\' '
                            "(default: router.replicas)")  # fmt: skip
    route.set_defaults(handler=run_router)


def run_router(cfg: EbrConfig, args: Namespace) -> int:
    import json
    import sys

    from serving.router import serve_router

    if args.replicas is not None:
        from config import ConfigError

        try:
            cfg = cfg.model_copy(update={"router": cfg.router.model_validate({**cfg.router.model_dump(),
                                                                              "replicas": json.loads(args.replicas)})})
        except (ValueError, ConfigError) as err:
            print(f"error: --replicas: {err}", file=sys.stderr)
            return 2
    if not cfg.router.replicas:
        print("error: no shard replicas: give --replicas '[[\"http://HOST:PORT\", ...], ...]' (one list per shard) "
              "or set router.replicas", file=sys.stderr)  # fmt: skip
        return 2
    host = args.host or cfg.router.host
    port = cfg.router.port if args.port is None else args.port
    print(f"routing on http://{host}:{port} over {len(cfg.router.replicas)} shard(s) "
          f"({sum(map(len, cfg.router.replicas))} replicas); root {cfg.root}; Ctrl-C stops", flush=True)  # fmt: skip
    serve_router(cfg, host=host, port=port)
    return 0
