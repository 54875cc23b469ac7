"""What the connection limits cost: the service on uvicorn's h11 protocol with this project's guard
(``app.connections.GuardedH11Protocol``, what ``python -m app`` serves with), on plain h11, and on uvicorn's
default httptools parser, which has neither a header limit nor a read timeout.

    python bench/http_parser.py [--checkpoint-dir checkpoints] [--clients 16] [--seconds 20] [--rounds 4]

The three servers are ``uvicorn app.main:app`` with ``--http`` set, over the same checkpoints and with the same
logging, so that only the protocol differs. --clients httpx clients, each with its own
keep-alive connection, send one request after another to ``GET /health`` (the parser's share of the work
is largest there) and to ``POST /v1/word2vec/similarity`` (a small inference); the servers take turns in
--rounds rounds so that other load on the machine weighs on all alike. Reported: answered requests per
second, p50 latency, and each server's rate against httptools'.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from pathlib import Path

import httpx
from service import Service

ROOT = Path(__file__).resolve().parent.parent
ENDPOINTS = {"GET /health": ("GET", "/health", None),
             "POST /v1/word2vec/similarity": ("POST", "/v1/word2vec/similarity", {"word_a": "king", "word_b": "queen"})}


async def drive(url: str, method: str, path: str, body: dict | None, clients: int,
                seconds: float) -> tuple[list[float], int]:
    """Latencies of the 200s and the count of everything else, from ``clients`` loops of requests."""
    latencies: list[float] = []
    errors = 0
    deadline = time.monotonic() + seconds

    async def one_client() -> None:
        nonlocal errors
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            while time.monotonic() < deadline:
                started = time.perf_counter()
                try:
                    response = await client.request(method, path, json=body)
                except httpx.HTTPError:
                    errors += 1
                    continue
                if response.status_code == 200:
                    latencies.append(time.perf_counter() - started)
                else:
                    errors += 1

    await asyncio.gather(*(one_client() for _ in range(clients)))
    return latencies, errors


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint-dir", type=Path, default=Path("checkpoints"))
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=20.0, help="per endpoint and server")
    parser.add_argument("--rounds", type=int, default=4, help="turns each server takes, --seconds split between them")
    parser.add_argument("--log-dir", type=Path, default=Path("bench-out"), help="where the servers' logs go")
    args = parser.parse_args()
    if not (args.checkpoint_dir / "word2vec-sg" / "config.json").is_file():
        print(f"no word2vec-sg checkpoint in {args.checkpoint_dir}; train it with `python -m training word2vec`",
              file=sys.stderr)
        return 1
    args.log_dir.mkdir(parents=True, exist_ok=True)
    uvicorn = [sys.executable, "-m", "uvicorn", "app.main:app", "--no-access-log", "--log-level", "warning"]
    servers = {"guarded h11": [*uvicorn, "--http", "app.connections:GuardedH11Protocol"],
               "h11": [*uvicorn, "--http", "h11"],
               "httptools": [*uvicorn, "--http", "httptools"]}
    results: dict[tuple[str, str], tuple[list[float], int, float]] = {}
    services: dict[str, Service] = {}
    try:
        for name, command in servers.items():
            services[name] = Service(args.checkpoint_dir, args.log_dir / f"http-{name}.log", command, LOG_FORMAT="text")
        urls = {name: service.url for name, service in services.items()}
        for endpoint, (method, path, body) in ENDPOINTS.items():
            for _ in range(args.rounds):
                for name, url in urls.items():
                    started = time.perf_counter()
                    latencies, errors = asyncio.run(drive(url, method, path, body, args.clients,
                                                          args.seconds / args.rounds))
                    elapsed = time.perf_counter() - started
                    so_far = results.get((endpoint, name), ([], 0, 0.0))
                    results[endpoint, name] = (so_far[0] + latencies, so_far[1] + errors, so_far[2] + elapsed)
    finally:
        for service in services.values():
            service.stop()

    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; {args.clients} clients, "
          f"{args.seconds:g} s per endpoint and server in {args.rounds} rounds")
    for endpoint in ENDPOINTS:
        rates = {}
        for name in servers:
            latencies, errors, elapsed = results[endpoint, name]
            rates[name] = len(latencies) / elapsed
            p50 = statistics.median(latencies) * 1000
            print(f"{endpoint:30s} {name:12s} {rates[name]:8.1f} requests/s  p50 {p50:6.1f} ms  errors {errors}")
        print(f"{endpoint:30s} against httptools: guarded h11 {rates['guarded h11'] / rates['httptools']:.2f}x, "
              f"h11 {rates['h11'] / rates['httptools']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
