"""`ebr serve` runs the retrieval service; `ebr query` asks a running one and prints the answer."""

from __future__ import annotations

import logging
import sys
from argparse import Namespace

from cli.arguments import add_wide_flag
from cli.hints import print_demo_root_hint
from cli.output import table
from config import EbrConfig
from serving.client import RetrievalClient, ServingClientError
from serving.text import format_versions


def add_parser(commands) -> None:
    serve = commands.add_parser(
        "serve",
        help="run the retrieval service (HTTP/JSON, hot-reloads published indexes)",
        description="Serves top-K retrieval from the indexes and user embeddings LATEST names, polling "
        "for new versions and swapping them in without dropping requests. OpenAPI at /docs.",
    )
    serve.add_argument("--host", help="default: serving.host (127.0.0.1)")
    serve.add_argument("--port", type=int, help="default: serving.port")
    serve.add_argument("--poll-interval", type=float, metavar="SECONDS", help="default: serving.poll_interval_s")
    serve.add_argument(
        "--shard",
        metavar="I/S",
        help="serve only shard I (from 0) of every shard-set index "
        "(index.shards=S), searched by vector on /v1/search, behind `ebr route`",
    )
    serve.set_defaults(handler=run_server)

    query = commands.add_parser("query", help="ask a running retrieval service and print the answer")
    query.add_argument("--url", help="service URL (default: http://127.0.0.1:<serving.port>)")
    actions = query.add_subparsers(dest="action", required=True, metavar="ACTION")
    user = actions.add_parser(
        "user",
        help="top-K stories (or creators, or users) for a user",
        epilog="e.g. ebr query user u42 -k 5 --exclude s1,s2 --exclude s3",
    )
    user.add_argument("user_id")
    user.add_argument("-k", type=int, default=10, help="results (default 10)")
    user.add_argument(
        "--collection",
        default="stories",
        help="stories (default), creators or users (users: the user itself is left out)",
    )
    # A comma list, repeatable: `nargs="*"` took the user id after it for one more id to exclude.
    user.add_argument(
        "--exclude",
        type=comma_list,
        action="extend",
        default=[],
        metavar="ID[,ID...]",
        help="ids never returned, comma-separated; repeatable",
    )
    similar = actions.add_parser("similar", help="items closest to one item of a collection")
    similar.add_argument("collection", help="stories, creators or users")
    similar.add_argument("item_id", metavar="ID")
    similar.add_argument("-k", type=int, default=10, help="results (default 10)")
    versions = actions.add_parser("versions", help="what the service serves, since when, from which model")
    for sub in (user, similar, versions):
        add_wide_flag(sub)
        sub.set_defaults(handler=run_query)


def comma_list(value: str) -> list[str]:
    """ "s1,s2" -> ["s1", "s2"] (blanks dropped)."""
    return [item.strip() for item in value.split(",") if item.strip()]


def run_server(cfg: EbrConfig, args: Namespace) -> int:
    from serving.server import serve

    service_logs_at_info()

    host = args.host or cfg.serving.host
    port = cfg.serving.port if args.port is None else args.port
    if args.shard is not None:
        from index_builder.sharding import parse_shard_spec
        from serving.shard_server import serve_shard

        try:
            shard, shards = parse_shard_spec(args.shard)
        except ValueError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        print(f"serving shard {shard} of {shards} on http://{host}:{port}; root {cfg.root}; Ctrl-C stops", flush=True)
        serve_shard(cfg, shard, shards, host=host, port=port, poll_interval_s=args.poll_interval)
        return 0
    print(f"serving on http://{host}:{port} (OpenAPI: /docs); root {cfg.root}; Ctrl-C stops", flush=True)
    print_demo_root_hint(cfg)
    serve(cfg, host=host, port=port, poll_interval_s=args.poll_interval)
    return 0


def service_logs_at_info() -> None:
    """The service's own lines at INFO, stamped with the time: the ready line (model,
    versions, counts), every swap, refusal and failed poll (the CLI's default is WARNING)."""
    logging.getLogger("serving").setLevel(logging.INFO)
    for handler in logging.getLogger().handlers:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))


def run_query(cfg: EbrConfig, args: Namespace) -> int:
    url = args.url or f"http://127.0.0.1:{cfg.serving.port}"
    with RetrievalClient(url, token=cfg.serving.token) as client:
        if args.action == "versions":
            print(format_versions(client.versions(), wide=args.wide))
            return 0
        if args.action == "user":
            answer = client.retrieve(args.collection, user_id=args.user_id, k=args.k, exclude=args.exclude)
            title = f"top {args.k} {args.collection} for user {args.user_id}"
        else:
            answer = client.similar(args.collection, args.item_id, k=args.k)
            title = f"{args.collection} similar to {args.item_id}"
    print(format_answer(title, answer, wide=args.wide))
    return 0


def format_answer(title: str, answer: dict, *, wide: bool = False) -> str:
    served = answer["served"]
    rows = [(rank, hit["id"], f"{hit['score']:.4f}") for rank, hit in enumerate(answer["items"], 1)]
    return "\n".join(
        [
            title,
            table(["rank", "id", "score"], rows, cut=(1,), wide=wide),
            f"from index {served['index_version']}, user embeddings {served['user_embeddings_version']}, "
            f"model {served['model_version']} (state {served['generation']})",
        ]
    )


EXPECTED_ERRORS = (ServingClientError,)
