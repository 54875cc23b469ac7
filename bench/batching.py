"""Dynamic batching on and off: fill-mask, classify and translate throughput under concurrent clients.

    python bench/batching.py [--checkpoint-dir checkpoints] [--clients 32] [--seconds 20] [--classifier cnn]

The real service (``python -m app``) is started twice on free loopback ports over the same
checkpoints: once with batching as configured (MAX_BATCH_SIZE, BATCH_WAIT_MS from the environment or
their defaults) and once with MAX_BATCH_SIZE=1, which turns it off. Against each, --clients clients, each
with its own keep-alive connection, send one request after another: fill-mask with one [MASK] in a line
of a validation play, classify with one passage of a validation play, translate (zh-en) with one HSK
sentence, decoded with the default 4 beams and, as ``translate-greedy``, greedily. The two modes take
turns in --rounds short rounds, so that a change in the machine's other load weighs on both alike. Both
servers admit every client (MAX_QUEUED_INFERENCES=--clients), so no request is turned away with 429.

The clients run on the same cores as the service, so they are written to cost little (``service.Connection``:
a request is bytes encoded once, an answer is read by its Content-Length), and the service's own CPU time
(user and system, from /proc) is reported per request: the figure that does not depend on what else runs.
Reported per endpoint and mode: answered requests per second, p50 and p95 latency, the mean batch size
(from /metrics), CPU milliseconds per request, and the on/off ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families
from service import Connection, Service

from training.data import load_hsk_pairs, plays_in


@dataclass
class Tally:
    """What one endpoint in one mode has measured, summed over the rounds."""

    latencies: list[float] = field(default_factory=list)  # seconds, of the answered requests
    errors: int = 0
    seconds: float = 0.0
    cpu_seconds: float = 0.0  # the service's, over the rounds
    batches: float = 0.0
    batched_requests: float = 0.0

    @property
    def requests_per_s(self) -> float:
        return len(self.latencies) / self.seconds

    @property
    def p95(self) -> float:
        return statistics.quantiles(self.latencies, n=100)[94]

    @property
    def cpu_ms(self) -> float:
        return self.cpu_seconds / max(1, len(self.latencies)) * 1000

    def summary(self) -> str:
        cuts = statistics.quantiles(self.latencies, n=100)
        mean_batch = self.batched_requests / max(1.0, self.batches)
        return (f"{self.requests_per_s:7.1f} requests/s  p50 {cuts[49] * 1000:6.1f} ms  p95 {cuts[94] * 1000:6.1f} ms  "
                f"mean batch {mean_batch:5.1f}  server CPU {self.cpu_ms:5.2f} ms/request  errors {self.errors}")


ENDPOINTS = ("fill-mask", "classify", "translate", "translate-greedy")


def workload(classifier: str) -> dict[str, tuple[str, str, list[dict]]]:
    """Endpoint name -> (model id, path, request bodies): speeches of the validation plays, HSK sentences."""
    speeches = [s.text.split() for play in plays_in("validation") for s in play.speeches]
    speeches = [words for words in speeches if len(words) >= 12][:256]
    fill = [{"text": " ".join(words[:5] + ["[MASK]"] + words[6:14]), "top_k": 5} for words in speeches]
    classify = [{"text": " ".join(words[:60]), "model": classifier} for words in speeches]
    translate = [{"text": chinese} for chinese, _ in load_hsk_pairs()[-256:]]
    return {"fill-mask": ("bert", "/v1/fill-mask", fill),
            "classify": (f"clf-{classifier}", "/v1/classify", classify),
            "translate": ("seq2seq-zh-en", "/v1/translate", translate),
            "translate-greedy": ("seq2seq-zh-en", "/v1/translate", [{**body, "beam_size": 1} for body in translate])}


async def drive(url: str, path: str, bodies: list[dict], clients: int, seconds: float) -> tuple[list[float], int]:
    """``clients`` loops sending one request after another: latencies of the 200s, count of the rest."""
    latencies: list[float] = []
    errors = 0
    deadline = time.monotonic() + seconds

    async def one_client(offset: int) -> None:
        nonlocal errors
        connection = await Connection.open(url)
        requests = [connection.request(path, body) for body in bodies]
        try:
            for request in itertools.islice(itertools.cycle(requests), offset, None):
                if time.monotonic() >= deadline:
                    return
                started = time.perf_counter()
                status, _ = await connection.send(request)
                if status == 200:
                    latencies.append(time.perf_counter() - started)
                else:
                    errors += 1
        finally:
            await connection.close()

    await asyncio.gather(*(one_client(i * 7) for i in range(clients)))
    return latencies, errors


def batch_sizes(url: str) -> dict[str, tuple[float, float]]:
    """Model id -> (sum, count) of its batch sizes so far."""
    totals: dict[str, tuple[float, float]] = {}
    for family in text_string_to_metric_families(httpx.get(url + "/metrics", timeout=10).text):
        if family.name == "lineage_batch_size":
            for s in family.samples:
                total, count = totals.get(s.labels["model"], (0.0, 0.0))
                if s.name.endswith("_sum"):
                    totals[s.labels["model"]] = (s.value, count)
                elif s.name.endswith("_count"):
                    totals[s.labels["model"]] = (total, s.value)
    return totals


def measure(tally: Tally, service: Service, model_id: str, path: str, bodies: list[dict], clients: int,
            seconds: float) -> None:
    total_before, count_before = batch_sizes(service.url).get(model_id, (0.0, 0.0))
    cpu_before = service.cpu_seconds()
    started = time.perf_counter()
    latencies, errors = asyncio.run(drive(service.url, path, bodies, clients, seconds))
    tally.seconds += time.perf_counter() - started
    tally.cpu_seconds += service.cpu_seconds() - cpu_before
    total, count = batch_sizes(service.url)[model_id]
    tally.latencies += latencies
    tally.errors += errors
    tally.batched_requests += total - total_before
    tally.batches += count - count_before


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint-dir", type=Path, default=Path("checkpoints"))
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=20.0, help="per endpoint and mode")
    parser.add_argument("--rounds", type=int, default=4, help="turns each mode takes, --seconds split between them")
    parser.add_argument("--classifier", default="cnn", help="which classifier answers classify")
    parser.add_argument("--endpoints", nargs="+", choices=ENDPOINTS, default=list(ENDPOINTS))
    parser.add_argument("--log-dir", type=Path, default=Path("bench-out"), help="where the servers' logs go")
    args = parser.parse_args()
    endpoints = {name: spec for name, spec in workload(args.classifier).items() if name in args.endpoints}
    for model_id, _, _ in endpoints.values():
        if not (args.checkpoint_dir / model_id / "config.json").is_file():
            print(f"no {model_id} checkpoint in {args.checkpoint_dir}; train it with `python -m training`",
                  file=sys.stderr)
            return 1
    args.log_dir.mkdir(parents=True, exist_ok=True)
    modes = {"on": {}, "off": {"MAX_BATCH_SIZE": "1"}}
    load_before = os.getloadavg()[0]

    tallies = {(name, mode): Tally() for name in endpoints for mode in modes}
    services: dict[str, Service] = {}
    try:
        for mode, env in modes.items():
            services[mode] = Service(args.checkpoint_dir, args.log_dir / f"batching-{mode}.log",
                                     MAX_QUEUED_INFERENCES=str(args.clients), **env)
        for name, (model_id, path, bodies) in endpoints.items():
            for service in services.values():  # warm up: allocator, kernels, every model
                asyncio.run(drive(service.url, path, bodies, args.clients, 2))
            for _ in range(args.rounds):
                for mode, service in services.items():
                    measure(tallies[name, mode], service, model_id, path, bodies, args.clients,
                            args.seconds / args.rounds)
    finally:
        for service in services.values():
            service.stop()

    print(f"checkpoints: {args.checkpoint_dir} ({', '.join(model for model, _, _ in endpoints.values())})")
    print(f"machine: {os.cpu_count()} CPUs, load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after; "
          f"TORCH_THREADS={os.environ.get('TORCH_THREADS', 'default')}; batching on = "
          f"MAX_BATCH_SIZE={os.environ.get('MAX_BATCH_SIZE', 'default')}, "
          f"BATCH_WAIT_MS={os.environ.get('BATCH_WAIT_MS', 'default')}")
    print(f"{args.clients} concurrent clients, {args.seconds:g} s per endpoint and mode in {args.rounds} rounds:")
    for name in endpoints:
        for mode in modes:
            print(f"  {name:9} batching {mode:3}: {tallies[name, mode].summary()}")
        on, off = tallies[name, "on"], tallies[name, "off"]
        print(f"  {name:9} on/off      : {on.requests_per_s / off.requests_per_s:7.2f}x requests/s, "
              f"p95 {on.p95 / off.p95:4.2f}x, server CPU per request {on.cpu_ms / off.cpu_ms:4.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
