"""Dynamic batching on and off: fill-mask and classify throughput under concurrent clients.

    python bench/batching.py [--checkpoint-dir checkpoints] [--clients 32] [--seconds 20] [--classifier cnn]

The real service (``python -m app``) is started twice on free loopback ports over the same
checkpoints: once with batching as configured (MAX_BATCH_SIZE, BATCH_WAIT_MS from the environment or
their defaults) and once with MAX_BATCH_SIZE=1, which turns it off. Against each, --clients httpx
clients send one request after another: fill-mask with one [MASK] in a line of a validation play,
classify with one passage of a validation play. The two modes take turns in --rounds short rounds,
so that a change in the machine's other load weighs on both alike. Both servers admit every client
(MAX_QUEUED_INFERENCES=--clients), so no request is turned away with 429. Reported: answered requests
per second, p50 and p95 latency, the mean batch size from /metrics, and the on/off ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from training.data import plays_in

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Tally:
    """What one endpoint in one mode has measured, summed over the rounds."""

    latencies: list[float] = field(default_factory=list)  # seconds, of the answered requests
    errors: int = 0
    seconds: float = 0.0
    batches: float = 0.0
    batched_requests: float = 0.0

    @property
    def requests_per_s(self) -> float:
        return len(self.latencies) / self.seconds

    def summary(self) -> str:
        cuts = statistics.quantiles(self.latencies, n=100)
        mean_batch = self.batched_requests / max(1.0, self.batches)
        return (f"{self.requests_per_s:7.1f} requests/s  p50 {cuts[49] * 1000:6.1f} ms  p95 {cuts[94] * 1000:6.1f} ms  "
                f"mean batch {mean_batch:5.1f}  errors {self.errors}")


def workload(classifier: str) -> dict[str, tuple[str, list[dict]]]:
    """Endpoint name -> (path, request bodies), from the speeches of the validation plays."""
    speeches = [s.text.split() for play in plays_in("validation") for s in play.speeches]
    speeches = [words for words in speeches if len(words) >= 12][:256]
    fill = [{"text": " ".join(words[:5] + ["[MASK]"] + words[6:14]), "top_k": 5} for words in speeches]
    classify = [{"text": " ".join(words[:60]), "model": classifier} for words in speeches]
    return {"fill-mask": ("/v1/fill-mask", fill), "classify": ("/v1/classify", classify)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(checkpoint_dir: Path, log: Path, **env: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    environment = {**os.environ, "CHECKPOINT_DIR": str(checkpoint_dir), "HOST": "127.0.0.1", "PORT": str(port),
                   "LOG_FORMAT": "text", **env}
    with open(log, "w") as out:
        process = subprocess.Popen([sys.executable, "-m", "app"], cwd=ROOT, env=environment, stdout=out,
                                   stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"server did not come up:\n{log.read_text()}")


async def drive(url: str, path: str, bodies: list[dict], clients: int, seconds: float) -> tuple[list[float], int]:
    """``clients`` loops sending one request after another: latencies of the 200s, count of the rest.

    Each loop has its own httpx client and connection: one client's pool shared by all of them costs
    the load generator twice the CPU per request, on the cores the server needs too.
    """
    latencies: list[float] = []
    errors = 0
    deadline = time.monotonic() + seconds

    async def one_client(offset: int) -> None:
        nonlocal errors
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            for body in itertools.islice(itertools.cycle(bodies), offset, None):
                if time.monotonic() >= deadline:
                    return
                started = time.perf_counter()
                try:
                    response = await client.post(path, json=body)
                except httpx.HTTPError:
                    errors += 1
                    continue
                if response.status_code == 200:
                    latencies.append(time.perf_counter() - started)
                else:
                    errors += 1

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


def measure(tally: Tally, url: str, model_id: str, path: str, bodies: list[dict], clients: int,
            seconds: float) -> None:
    total_before, count_before = batch_sizes(url).get(model_id, (0.0, 0.0))
    started = time.perf_counter()
    latencies, errors = asyncio.run(drive(url, path, bodies, clients, seconds))
    tally.seconds += time.perf_counter() - started
    total, count = batch_sizes(url)[model_id]
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
    parser.add_argument("--log-dir", type=Path, default=Path("bench-out"), help="where the servers' logs go")
    args = parser.parse_args()
    models = {"fill-mask": "bert", "classify": f"clf-{args.classifier}"}
    for model_id in models.values():
        if not (args.checkpoint_dir / model_id / "config.json").is_file():
            print(f"no {model_id} checkpoint in {args.checkpoint_dir}; train it with `python -m training`",
                  file=sys.stderr)
            return 1
    args.log_dir.mkdir(parents=True, exist_ok=True)
    endpoints = workload(args.classifier)
    modes = {"on": {}, "off": {"MAX_BATCH_SIZE": "1"}}

    tallies = {(name, mode): Tally() for name in endpoints for mode in modes}
    processes: list[subprocess.Popen] = []
    try:
        urls = {}
        for mode, env in modes.items():
            process, urls[mode] = start_server(args.checkpoint_dir, args.log_dir / f"batching-{mode}.log",
                                               MAX_QUEUED_INFERENCES=str(args.clients), **env)
            processes.append(process)
        for name, (path, bodies) in endpoints.items():
            for url in urls.values():  # warm up: allocator, kernels, every model
                for body in bodies[:args.clients]:
                    httpx.post(url + path, json=body, timeout=60).raise_for_status()
            for _ in range(args.rounds):
                for mode, url in urls.items():
                    measure(tallies[name, mode], url, models[name], path, bodies, args.clients,
                            args.seconds / args.rounds)
    finally:
        for process in processes:
            process.terminate()
            process.wait(timeout=30)

    print(f"checkpoints: {args.checkpoint_dir} (fill-mask: bert, classify: clf-{args.classifier})")
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}, "
          f"TORCH_THREADS={os.environ.get('TORCH_THREADS', 'default')}; batching on = "
          f"MAX_BATCH_SIZE={os.environ.get('MAX_BATCH_SIZE', 'default')}, "
          f"BATCH_WAIT_MS={os.environ.get('BATCH_WAIT_MS', 'default')}")
    print(f"{args.clients} concurrent clients, {args.seconds:g} s per endpoint and mode in {args.rounds} rounds:")
    for name in endpoints:
        for mode in modes:
            print(f"  {name:9} batching {mode:3}: {tallies[name, mode].summary()}")
        ratio = tallies[name, "on"].requests_per_s / tallies[name, "off"].requests_per_s
        print(f"  {name:9} on/off      : {ratio:7.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
