"""Resident memory of the service under a mix of valid requests, each at the largest size it accepts.

    python bench/memory.py [--checkpoint-dir checkpoints] [--clients 8] [--seconds 60]

The real service (``python -m app``) is started on a free loopback port. For every route the bench first
finds the largest request the service answers 200 (starting from each limit's maximum and halving what
the service refuses with 422: a reply over MAX_RESPONSE_BYTES, more tokens than a model's positions), then
--clients httpx clients send those requests, mixed, one after another for --seconds. Reported: the
server's resident memory (VmRSS) once its models are loaded, after one request of each kind, at its peak
while loaded, and after the load; the growth from the start must stay under 300 MB.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from service import Service  # noqa: E402

from app.settings import get_settings  # noqa: E402

LIMIT_MB = 300


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def largest(settings: Any) -> dict[str, tuple[str, dict[str, Any]]]:
    """Each route's request at every limit's maximum (the service may refuse some; see ``accepted``)."""
    s = settings
    cjk = "我们明天在学校见面吧你好谢谢" * 20
    words = ("king queen love death night lord lady sword crown fool " * 400).split()
    return {
        "translate": ("/v1/translate", {"texts": [cjk[i:i + s.max_translate_text_length]
                                                  for i in range(s.max_translate_texts)],
                                        "max_length": s.max_translation_length}),
        "translate-beam": ("/v1/translate", {"texts": [cjk[:s.max_translate_text_length]] * s.max_translate_texts,
                                             "direction": "zh-en", "beam_size": s.max_beam_size,
                                             "max_length": s.max_translation_length}),
        "attention.png": ("/v1/translate/attention.png", {"text": cjk[:s.max_translate_text_length],
                                                          "max_length": s.max_translation_length}),
        "fill-mask": ("/v1/fill-mask", {"text": (" ".join(words) + " [MASK]")[-s.max_text_length:],
                                        "top_k": s.max_top_k}),
        "next-sentence": ("/v1/next-sentence", {"text_a": " ".join(words)[:s.max_text_length],
                                                "text_b": " ".join(words)[:s.max_text_length]}),
        "classify": ("/v1/classify", {"texts": [" ".join(words)[:s.max_classify_text_length]] * s.max_classify_texts,
                                      "model": "lstm"}),
        "classify-bert": ("/v1/classify", {"texts": [" ".join(words)[:s.max_classify_text_length]]
                                           * s.max_classify_texts, "model": "bert"}),
        "most-similar": ("/v1/word2vec/most-similar", {"positive": words[:s.max_query_words],
                                                       "negative": words[5:5 + s.max_query_words],
                                                       "topn": s.max_topn}),
        "generate": ("/v1/generate", {"prompt": " ".join(words)[:s.max_text_length], "n": s.max_samples,
                                      "max_new_tokens": s.max_new_tokens, "stop": ["\n\n\n"], "seed": 1}),
        "generate-lstm": ("/v1/generate", {"prompt": " ".join(words)[:s.max_text_length], "model": "lstm",
                                           "n": s.max_samples, "max_new_tokens": s.max_new_tokens}),
        "stream": ("/v1/generate", {"prompt": " ".join(words)[:s.max_text_length], "stream": True,
                                    "max_new_tokens": s.max_new_tokens}),
        "completions": ("/v1/completions", {"prompt": [" ".join(words)[:s.max_text_length]] * s.max_prompts,
                                            "n": s.max_samples, "max_tokens": s.max_new_tokens, "echo": True}),
    }


def smaller(body: dict[str, Any]) -> dict[str, Any] | None:
    """The request with its largest list or text halved; None once nothing is left to halve."""
    for key in ("texts", "prompt", "positive", "n", "top_k", "text", "text_a", "text_b", "max_length"):
        value = body.get(key)
        if isinstance(value, list) and len(value) > 1:
            return {**body, key: value[: len(value) // 2]}
        if isinstance(value, int) and value > 1:
            return {**body, key: value // 2}
        if isinstance(value, str) and len(value) > 16:
            return {**body, key: value[len(value) // 2:]}  # the second half: fill-mask's [MASK] is at the end
    return None


def accepted(client: httpx.Client, name: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    """The largest request of this kind the service answers 200."""
    candidate: dict[str, Any] | None = body
    while candidate is not None:
        response = client.post(path, json=candidate)
        if response.status_code == 200:
            return candidate
        if response.status_code != 422:
            raise RuntimeError(f"{name}: {response.status_code} {response.text[:300]}")
        candidate = smaller(candidate)
    raise RuntimeError(f"{name}: no size of it is accepted")


async def load(url: str, requests: list[tuple[str, str, dict[str, Any]]], clients: int, seconds: float,
               pid: int) -> tuple[Counter[str], float]:
    statuses: Counter[str] = Counter()
    peak = 0.0
    until = time.monotonic() + seconds

    async def client(seed: int) -> None:
        order = random.Random(seed)
        async with httpx.AsyncClient(base_url=url, timeout=600) as http:
            while time.monotonic() < until:
                name, path, body = order.choice(requests)
                response = await http.post(path, json=body)
                statuses[f"{name} {response.status_code}"] += 1

    async def watch() -> None:
        nonlocal peak
        while time.monotonic() < until:
            peak = max(peak, rss_mb(pid))
            await asyncio.sleep(0.5)

    await asyncio.gather(watch(), *(client(i) for i in range(clients)))
    return statuses, peak


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint-dir", type=Path, default=ROOT / "checkpoints")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=60)
    args = parser.parse_args()

    # Every client admitted and none timed out, so each request runs to its end and memory sees it all.
    service = Service(args.checkpoint_dir, Path(tempfile.mkdtemp()) / "bench-memory.log", LOG_FORMAT="text",
                      MAX_QUEUED_INFERENCES=str(args.clients), REQUEST_TIMEOUT="600")
    url, pid = service.url, service.process.pid
    try:
        with httpx.Client(base_url=url, timeout=600) as client:
            started = rss_mb(pid)
            requests = [(name, path, accepted(client, name, path, body))
                        for name, (path, body) in largest(get_settings()).items()]
            warm = rss_mb(pid)
        print("requests (largest accepted): " + ", ".join(f"{name}: {len(str(body))} chars"
                                                          for name, _, body in requests))
        statuses, peak = asyncio.run(load(url, requests, args.clients, args.seconds, pid))
        time.sleep(2)
        after = rss_mb(pid)
    finally:
        service.stop()
    print("answers: " + ", ".join(f"{key} x{count}" for key, count in sorted(statuses.items())))
    print(f"resident memory: {started:.0f} MB loaded, {warm:.0f} MB after one request of each kind, "
          f"{max(peak, after):.0f} MB at the peak, {after:.0f} MB after {args.seconds:g} s of {args.clients} clients")
    growth = after - started
    print(f"growth {growth:+.0f} MB (limit {LIMIT_MB} MB); load average {os.getloadavg()[0]:.2f}")
    bad = [key for key in statuses if not key.endswith(" 200")]
    return 0 if growth < LIMIT_MB and not bad else 1


if __name__ == "__main__":
    sys.exit(main())
