"""`ebr data ...`: write and inspect the warehouse."""

from __future__ import annotations

import json
from argparse import Namespace
from pathlib import Path

from cli.output import table
from config import EbrConfig
from warehouse import Warehouse


def _refuse_overwrite(warehouse: Warehouse, args: Namespace) -> None:
    if warehouse.exists() and not args.overwrite:
        raise SystemExit(f"error: {warehouse.uri} already holds a warehouse; pass --overwrite to replace it")


def generate(cfg: EbrConfig, args: Namespace) -> None:
    from warehouse.synthetic import generate_world

    warehouse = Warehouse.from_config(cfg)
    _refuse_overwrite(warehouse, args)
    world = cfg.world
    print(
        f"generating a '{world.size}' synthetic world (seed {world.seed}): "
        f"{world.count('n_users'):,} users, {world.count('n_creators'):,} creators, "
        f"{world.count('n_stories'):,} stories, {world.count('n_events'):,} events over "
        f"{world.count('days')} days -> {warehouse.uri}"
    )
    summary = generate_world(world, warehouse, progress=not args.no_progress)
    print(f"done in {summary['seconds']:.1f}s")


def convert(cfg: EbrConfig, args: Namespace) -> None:
    warehouse = Warehouse.from_config(cfg)
    _refuse_overwrite(warehouse, args)
    source = Path(args.source)
    if args.dataset == "movielens":
        from warehouse.movielens import convert_movielens

        summary = convert_movielens(source, warehouse)
    else:
        from warehouse.kuairand import convert_kuairand

        summary = convert_kuairand(source, warehouse, include_random=args.include_random)
    counts = summary["counts"]
    print(
        f"converted {summary['source']} from {source} -> {warehouse.uri}: "
        + ", ".join(f"{v:,} {k}" for k, v in counts.items())
    )


def show(cfg: EbrConfig, args: Namespace) -> None:
    summary = Warehouse.from_config(cfg).summary()
    if args.json:
        print(json.dumps(summary, indent=2))
        return
    source = summary["source"]
    print(f"warehouse {summary['uri']}")
    print(f"source    {source.get('source', 'unknown')}" + (f" ({source['path']})" if "path" in source else ""))
    print(f"events    {summary['days']} day partitions, {summary['first_day']} .. {summary['last_day']}")
    print()
    print(table(["table", "rows"], [(name, f"{n:,}") for name, n in summary["rows"].items()], wide=args.wide))
