"""Service behaviour shared by every endpoint: auth, metrics, logs, reload, refused checkpoints,
capacity, and the Docker entrypoint — each against a real server process where it is an endpoint."""

from __future__ import annotations

import asyncio
import http.client
import json
import shutil
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import torch

from app.inference import InferencePool, InferenceTimeout, OverCapacity

from .conftest import ROOT, Server


@pytest.fixture
def logs(tmp_path: Path) -> Path:
    return tmp_path / "server.log"


def test_api_key_guards_v1_routes_only(checkpoint_dir: Path, logs: Path):
    server = Server(checkpoint_dir, logs, API_KEY="s3cret")
    try:
        with httpx.Client(base_url=server.url, timeout=30) as c:
            assert c.get("/v1/models").status_code == 401
            assert c.get("/v1/models", headers={"Authorization": "Bearer wrong"}).status_code == 401
            response = c.post("/v1/word2vec/similarity", json={"word_a": "king", "word_b": "queen"})
            assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"
            assert c.get("/v1/models", headers={"Authorization": "Bearer s3cret"}).status_code == 200
            assert c.post("/v1/admin/reload").status_code == 401
            for open_path in ("/", "/health", "/ready", "/metrics", "/docs", "/openapi.json"):
                assert c.get(open_path).status_code == 200, open_path
    finally:
        server.stop()


def test_idle_keep_alive_connections_outlive_the_clients_expiry(server: str):
    """The service keeps an idle connection open longer than httpx's 5 s expiry, so the client, not the
    server, closes it: a request sent on a connection the server has just closed gets no answer."""
    port = int(server.rsplit(":", 1)[1])
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", "/health")
        first = connection.getresponse()
        assert first.status == 200 and first.read() == b'{"status":"ok"}'
        idle_socket = connection.sock
        time.sleep(6)  # longer than both uvicorn's default keep-alive and httpx's expiry (5 s)
        # Had the server closed the socket, this would raise RemoteDisconnected rather than reconnect.
        connection.request("GET", "/health")
        second = connection.getresponse()
        assert second.status == 200 and second.read() == b'{"status":"ok"}'
        assert connection.sock is idle_socket, "the request went over a new connection"
    finally:
        connection.close()


def _admitted(c: httpx.Client) -> float:
    [line] = [line for line in c.get("/metrics").text.splitlines() if line.startswith("lineage_inferences_admitted ")]
    return float(line.split()[1])


def test_shutdown_finishes_the_requests_in_flight(checkpoint_dir: Path, logs: Path):
    server = Server(checkpoint_dir, logs)
    try:
        with httpx.Client(base_url=server.url, timeout=60) as c, ThreadPoolExecutor(1) as background:
            # Long enough to be caught running: eight samples of the most tokens a request may ask for.
            body = {"prompt": "ROMEO:", "max_new_tokens": 512, "n": 8, "seed": 0}
            reply = background.submit(c.post, "/v1/generate", json=body)
            deadline = time.monotonic() + 30
            while _admitted(c) < 1 and not reply.done() and time.monotonic() < deadline:
                time.sleep(0.01)
            assert not reply.done(), "the generation ended before the shutdown could start"
            server.process.send_signal(signal.SIGTERM)
            response = reply.result(timeout=60)
            assert response.status_code == 200 and len(response.json()["results"]) == 8
            # Once shut down, uvicorn re-raises the signal, so the exit reads as the signal's.
            assert server.process.wait(timeout=30) in (0, -signal.SIGTERM)
            assert "Finished server process" in server.log_path.read_text()
            with pytest.raises(httpx.TransportError):
                c.get("/health")
    finally:
        server.stop()


def test_metrics_count_requests_by_route_status_and_model(client: httpx.Client):
    client.post("/v1/word2vec/similarity", json={"word_a": "king", "word_b": "queen"})
    client.post("/v1/word2vec/similarity", json={"word_a": "king", "word_b": "qqqqzz"})
    text = client.get("/metrics").text
    assert ('lineage_requests_total{method="POST",model="word2vec-sg",'
            'route="/v1/word2vec/similarity",status="200"}') in text
    assert 'lineage_errors_total{model="word2vec-sg",route="/v1/word2vec/similarity",status="404"}' in text
    assert "lineage_request_seconds_bucket" in text
    loaded = next(line for line in text.splitlines() if line.startswith("lineage_loaded_models "))
    assert float(loaded.split()[1]) >= 2
    assert "lineage_inference_queue_depth" in text


def test_logs_are_json_lines_carrying_the_request_id(checkpoint_dir: Path, logs: Path):
    server = Server(checkpoint_dir, logs)
    try:
        httpx.get(server.url + "/v1/models", headers={"X-Request-ID": "trace-42"}, timeout=30)
    finally:
        server.stop()
    records = [json.loads(line) for line in logs.read_text().splitlines() if line.startswith("{")]
    access = [r for r in records if r["request_id"] == "trace-42"]
    assert access and access[0]["route"] == "/v1/models" and access[0]["status"] == 200
    assert any(r["logger"] == "app.registry" and "loaded word2vec-sg" in r["message"] for r in records)


def _copy(source: Path, target: Path, checkpoint_id: str) -> Path:
    shutil.copytree(source, target / checkpoint_id)
    config_path = target / checkpoint_id / "config.json"
    config = json.loads(config_path.read_text())
    config["id"] = checkpoint_id
    config_path.write_text(json.dumps(config))
    return target / checkpoint_id


def test_bad_checkpoints_are_refused_and_the_rest_served(checkpoint_dir: Path, tmp_path: Path, logs: Path):
    root = tmp_path / "mixed"
    root.mkdir()
    shutil.copytree(checkpoint_dir / "word2vec-sg", root / "word2vec-sg")
    truncated = _copy(checkpoint_dir / "word2vec-cbow", root, "word2vec-cbow")
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    pickled = _copy(checkpoint_dir / "word2vec-cbow", root, "word2vec-pickled")
    torch.save({"input_embeddings.weight": torch.zeros(3, 3)}, pickled / "model.safetensors")
    (_copy(checkpoint_dir / "word2vec-cbow", root, "word2vec-noconfig") / "config.json").write_text("{oops")

    server = Server(root, logs)
    try:
        with httpx.Client(base_url=server.url, timeout=30) as c:
            ready = c.get("/ready")
            assert ready.status_code == 200
            states = {s["id"]: s for s in ready.json()["checkpoints"]}
            assert states["word2vec-sg"]["status"] == "loaded"
            for bad in ("word2vec-cbow", "word2vec-pickled", "word2vec-noconfig"):
                assert states[bad]["status"] == "refused" and states[bad]["reason"], bad
            assert "model.safetensors" in states["word2vec-pickled"]["reason"]
            assert c.post("/v1/word2vec/similarity", json={"word_a": "king", "word_b": "queen"}).status_code == 200
            cbow = c.post("/v1/word2vec/similarity", json={"word_a": "king", "word_b": "queen", "model": "cbow"})
            assert cbow.status_code == 503
    finally:
        server.stop()
    assert "refused checkpoint word2vec-pickled" in logs.read_text()


def test_ready_marks_default_checkpoints_an_earlier_recipe_trained_and_still_serves_them(checkpoint_dir: Path,
                                                                                        tmp_path: Path, logs: Path):
    root = tmp_path / "recipes"
    root.mkdir()
    shutil.copytree(checkpoint_dir / "word2vec-sg", root / "word2vec-sg")
    earlier = shutil.copytree(checkpoint_dir / "word2vec-cbow", root / "word2vec-cbow")
    config = json.loads((earlier / "config.json").read_text())
    config["recipe"]["fingerprint"] = "0" * 16
    (earlier / "config.json").write_text(json.dumps(config))
    before = _copy(checkpoint_dir / "lm-rnn", root, "lm-gru")  # a default id, as written before recipes were recorded
    config = json.loads((before / "config.json").read_text())
    del config["recipe"]
    config["training"] = {"profile": "tiny"}  # where those recorded their profile
    (before / "config.json").write_text(json.dumps(config))
    _copy(checkpoint_dir / "lm-rnn", root, "lm-mine")  # not a default checkpoint: no recipe to compare with

    server = Server(root, logs)
    try:
        with httpx.Client(base_url=server.url, timeout=30) as c:
            states = {s["id"]: s for s in c.get("/ready").json()["checkpoints"]}
            assert states["word2vec-sg"]["outdated"] is None and states["lm-mine"]["outdated"] is None
            assert "0000000000000000" in states["word2vec-cbow"]["outdated"]
            assert "before checkpoints recorded their recipe" in states["lm-gru"]["outdated"]
            for earlier_id in ("word2vec-cbow", "lm-gru"):
                assert states[earlier_id]["status"] == "loaded"
                assert "python -m training all --missing --profile tiny" in states[earlier_id]["outdated"]
            cbow = c.post("/v1/word2vec/similarity", json={"word_a": "king", "word_b": "queen", "model": "cbow"})
            assert cbow.status_code == 200
    finally:
        server.stop()


def test_every_checkpoint_the_tiny_profile_trains_is_current(client: httpx.Client):
    states = client.get("/ready").json()["checkpoints"]
    assert states and all(s["outdated"] is None for s in states), states


def test_reload_adds_new_models_and_keeps_old_ones_whose_update_fails(checkpoint_dir, tmp_path, logs):
    root = tmp_path / "live"
    root.mkdir()
    shutil.copytree(checkpoint_dir / "word2vec-sg", root / "word2vec-sg")
    server = Server(root, logs)
    try:
        with httpx.Client(base_url=server.url, timeout=60) as c:
            body = {"word_a": "king", "word_b": "queen", "model": "cbow"}
            assert c.post("/v1/word2vec/similarity", json=body).status_code == 503
            shutil.copytree(checkpoint_dir / "word2vec-cbow", root / "word2vec-cbow")
            (root / "word2vec-sg" / "model.safetensors").write_bytes(b"broken")
            reloaded = c.post("/v1/admin/reload")
            assert reloaded.status_code == 200
            states = {s["id"]: s for s in reloaded.json()["checkpoints"]}
            assert states["word2vec-cbow"]["status"] == "loaded"
            assert states["word2vec-sg"]["status"] == "loaded" and "kept previous" in states["word2vec-sg"]["reason"]
            assert c.post("/v1/word2vec/similarity", json=body).status_code == 200
            assert c.post("/v1/word2vec/similarity", json={**body, "model": "sg"}).status_code == 200
    finally:
        server.stop()


def test_docker_entrypoint_serves_the_checkpoints(checkpoint_dir: Path, logs: Path):
    server = Server(checkpoint_dir, logs, command=["sh", str(ROOT / "docker" / "entrypoint.sh")],
                    PYTHON=sys.executable)
    try:
        ready = httpx.get(server.url + "/ready", timeout=30)
        assert ready.status_code == 200 and ready.json()["ready"] is True
    finally:
        server.stop()


def test_pool_answers_429_past_capacity_and_504_past_the_timeout():
    async def scenario() -> None:
        pool = InferencePool(max_concurrent=1, max_queued=0, timeout=0.2)
        async with pool.slot():
            with pytest.raises(OverCapacity) as refused:
                await pool.run(lambda: 1)
            assert refused.value.status_code == 429 and refused.value.headers["Retry-After"] == "1"
        assert await pool.run(lambda: 41 + 1) == 42
        with pytest.raises(InferenceTimeout) as late:
            await pool.run(lambda: time.sleep(1.0))
        assert late.value.status_code == 504
        assert pool.admitted == 0

    asyncio.run(scenario())
