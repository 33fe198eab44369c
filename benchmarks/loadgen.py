"""The HTTP load generators of the benchmarks, each run in a process of its own.

    python benchmarks/loadgen.py serving --port P --mode closed|rate --users N --out FILE.npz [...]
    python benchmarks/loadgen.py soak --port P --rate R --duration S --concurrency C --users N --out FILE.npz

Both speak HTTP/1.1 over asyncio streams (uvloop where installed) on keep-alive
connections to 127.0.0.1, each request a random known user, and write per-request
arrays to an .npz file for the benchmark process to read:

  * serving (serving.py and router.py, through `run_loadgen`): closed loop or a fixed
    rate; latency from each request's scheduled send time; `summarize` reduces the
    arrays to the percentiles the benchmarks report;
  * soak (soak.py): a fixed rate that reconnects after an error and records it (status
    0), the error code and the (index, user embeddings, model) every answer names, and
    /readyz sampled every READYZ_EVERY_S on a connection of its own.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

K = 10
READYZ_EVERY_S = 0.1


async def read_response(reader: asyncio.StreamReader, timeout: float | None = None) -> tuple[int, bytes]:
    """(status, body) of the next HTTP/1.1 response; TIMEOUT bounds the wait for its head."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
    at = head.lower().find(b"content-length:")
    body = await reader.readexactly(int(head[at + 15 : head.find(b"\r\n", at)]))
    return int(head[9:12]), body


def install_uvloop() -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass


# -- serving.py's and router.py's: closed loop or a fixed rate --------------------------------


def request_bytes(user_ids: list[str], k: int) -> list[bytes]:
    """One POST /v1/retrieve/stories request per user, ready to write on a keep-alive connection."""
    out = []
    for user_id in user_ids:
        body = json.dumps({"user_id": user_id, "k": k}).encode()
        out.append(
            b"POST /v1/retrieve/stories HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
    return out


async def _connection(
    port: int,
    requests: list[bytes],
    schedule: np.ndarray | None,
    stop_at: float,
    out: list[tuple[float, float, int, bytes]],
) -> None:
    """One keep-alive connection: sends its requests in order, at `schedule` times if given.

    Records (scheduled or actual send time, latency from that time, status, index version).
    """
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    loop = asyncio.get_running_loop()
    try:
        for i, request in enumerate(requests):
            now = time.monotonic()
            if now >= stop_at:
                break
            if schedule is not None:
                start = schedule[i]
                if start > now:
                    await asyncio.sleep(start - now)
            else:
                start = now
            writer.write(request)
            status, body = await read_response(reader)
            latency = time.monotonic() - start
            at = body.find(b'"index_version":"')
            version = body[at + 17 : body.find(b'"', at + 17)] if at >= 0 else b""
            out.append((start, latency, status, version))
    finally:
        writer.close()
        del loop


async def _serving_load(port: int, mode: str, rate: float, duration: float, concurrency: int, n_users: int, seed: int):
    rng = np.random.default_rng(seed)
    cap = int(rate * duration) if mode == "rate" else 400_000  # bounded in count and in time
    users = [f"u{i}" for i in rng.integers(0, n_users, size=cap)]
    requests = request_bytes(users, K)
    t0 = time.monotonic() + 0.2
    stop_at = t0 + duration
    out: list[tuple[float, float, int, bytes]] = []
    tasks = []
    for c in range(concurrency):
        mine = requests[c::concurrency]
        schedule = t0 + np.arange(c, cap, concurrency) / rate if mode == "rate" else None
        tasks.append(_connection(port, mine, schedule, stop_at + (5.0 if mode == "rate" else 0.0), out))
    await asyncio.gather(*tasks)
    return out


def serving_main(argv: list[str]) -> None:
    """`loadgen.py serving`: closed loop or a fixed rate; writes start, latency, status, version per request."""
    parser = argparse.ArgumentParser(prog="loadgen.py serving")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--mode", choices=["closed", "rate"], required=True)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--users", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    install_uvloop()
    rows = asyncio.run(
        _serving_load(args.port, args.mode, args.rate, args.duration, args.concurrency, args.users, args.seed)
    )
    versions = sorted({r[3] for r in rows})
    code = {v: i for i, v in enumerate(versions)}
    np.savez(
        args.out,
        start=np.array([r[0] for r in rows]),
        latency=np.array([r[1] for r in rows]),
        status=np.array([r[2] for r in rows]),
        version=np.array([code[r[3]] for r in rows]),
        names=np.array([v.decode() for v in versions]),
    )


def run_loadgen(
    port: int, mode: str, *, duration: float, rate: float, concurrency: int, users: int, workdir: Path, seed: int
) -> dict:
    """Runs `loadgen.py serving` in its own process and waits for it; returns its per-request arrays."""
    out = workdir / f"loadgen-{mode}-{seed}.npz"
    cmd = [
        sys.executable,
        __file__,
        "serving",
        f"--port={port}",
        f"--mode={mode}",
        f"--rate={rate}",
        f"--duration={duration}",
        f"--concurrency={concurrency}",
        f"--users={users}",
        f"--seed={seed}",
        f"--out={out}",
    ]
    subprocess.run(cmd, check=True, timeout=duration + 120)
    data = np.load(out)
    return {key: data[key] for key in data.files}


def summarize(rows: dict, mask: np.ndarray | None = None) -> dict:
    start, latency, status = rows["start"], rows["latency"], rows["status"]
    if mask is not None:
        start, latency, status = start[mask], latency[mask], status[mask]
    if not len(latency):
        return {"requests": 0}
    span = max(float(start.max() - start.min()), 1e-9)
    ms = latency * 1000
    return {
        "requests": int(len(latency)),
        "failed": int((status != 200).sum()),
        "qps": round(len(latency) / span, 1),
        "p50_ms": round(float(np.percentile(ms, 50)), 3),
        "p99_ms": round(float(np.percentile(ms, 99)), 3),
        "p999_ms": round(float(np.percentile(ms, 99.9)), 3),
        "max_ms": round(float(ms.max()), 3),
    }


# -- soak.py's: a fixed rate through faults, and /readyz -------------------------------------


async def _retrieve_loop(port: int, requests: list[bytes], schedule: np.ndarray, stop_at: float, out: list) -> None:
    """One keep-alive connection at fixed times; reconnects after an error (recorded as status 0)."""
    import orjson

    reader = writer = None
    for request, start in zip(requests, schedule, strict=True):
        now = time.monotonic()
        if now >= stop_at:
            break
        if start > now:
            await asyncio.sleep(start - now)
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(request)
            status, body = await read_response(reader, timeout=30)
            answer = orjson.loads(body)
        except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError) as err:
            out.append((start, time.monotonic() - start, 0, type(err).__name__, "", "", ""))
            if writer is not None:
                writer.close()
            reader = writer = None
            continue
        served = answer.get("served") or {}
        code = "" if status == 200 else (answer.get("error") or {}).get("code", "?")
        out.append(
            (
                start,
                time.monotonic() - start,
                status,
                code,
                served.get("index_version", ""),
                served.get("user_embeddings_version", ""),
                served.get("model_version", ""),
            )
        )
    if writer is not None:
        writer.close()


async def _readyz_loop(port: int, stop_at: float, out: list) -> None:
    request = b"GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    reader = writer = None
    while time.monotonic() < stop_at:
        started = time.monotonic()
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(request)
            status, _ = await read_response(reader, timeout=10)
            out.append((started, status))
        except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError):
            out.append((started, 0))
            reader = writer = None
        await asyncio.sleep(max(0.0, READYZ_EVERY_S - (time.monotonic() - started)))


async def _soak_load(port: int, rate: float, duration: float, concurrency: int, n_users: int, seed: int):
    rng = np.random.default_rng(seed)
    count = int(rate * duration)
    requests = request_bytes([f"u{i}" for i in rng.integers(0, n_users, size=count)], K)
    t0 = time.monotonic() + 0.2
    stop_at = t0 + duration
    retrieved: list = []
    readyz: list = []
    tasks = [
        _retrieve_loop(
            port, requests[c::concurrency], t0 + np.arange(c, count, concurrency) / rate, stop_at + 5, retrieved
        )
        for c in range(concurrency)
    ]
    await asyncio.gather(*tasks, _readyz_loop(port, stop_at, readyz))
    return retrieved, readyz


def soak_main(argv: list[str]) -> None:
    """`loadgen.py soak`: a fixed rate that survives errors, and /readyz sampled beside it."""
    parser = argparse.ArgumentParser(prog="loadgen.py soak")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--rate", type=float, required=True)
    parser.add_argument("--duration", type=float, required=True)
    parser.add_argument("--concurrency", type=int, required=True)
    parser.add_argument("--users", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    install_uvloop()
    retrieved, readyz = asyncio.run(
        _soak_load(args.port, args.rate, args.duration, args.concurrency, args.users, args.seed)
    )
    retrieved.sort(key=lambda row: row[0])
    columns = list(zip(*retrieved, strict=True)) if retrieved else [[]] * 7
    np.savez(
        args.out,
        start=np.array(columns[0], dtype=float),
        latency=np.array(columns[1], dtype=float),
        status=np.array(columns[2], dtype=int),
        code=np.array(columns[3], dtype=str),
        index_version=np.array(columns[4], dtype=str),
        users_version=np.array(columns[5], dtype=str),
        model_version=np.array(columns[6], dtype=str),
        readyz_at=np.array([r[0] for r in readyz], dtype=float),
        readyz_status=np.array([r[1] for r in readyz], dtype=int),
    )


COMMANDS = {"serving": serving_main, "soak": soak_main}


def main(argv: list[str]) -> None:
    if argv[:1] in (["-h"], ["--help"]):
        print(__doc__)
    elif not argv or argv[0] not in COMMANDS:
        raise SystemExit(
            f"usage: loadgen.py {{{','.join(COMMANDS)}}} ... (got {' '.join(argv) or 'nothing'}); see --help"
        )
    else:
        COMMANDS[argv[0]](argv[1:])


if __name__ == "__main__":
    main(sys.argv[1:])
