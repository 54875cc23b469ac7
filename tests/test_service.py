"""Service behaviour shared by every endpoint: auth, metrics, logs, reload, refused checkpoints,
capacity, and the Docker entrypoint — each against a real server process where it is an endpoint."""

from __future__ import annotations

import asyncio
import http.client
import json
import shutil
import signal
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import torch
from safetensors.torch import save_file

from app.inference import InferencePool, InferenceTimeout, OverCapacity

from . import reference
from .conftest import API_KEY, ROOT, Service, copy_checkpoint, gauge, wait_until


@pytest.fixture
def logs(tmp_path: Path) -> Path:
    return tmp_path / "server.log"


def test_api_key_guards_v1_routes_only(keyed_server: str):
    with httpx.Client(base_url=keyed_server, timeout=30) as c:
        assert c.get("/v1/models").status_code == 401
        assert c.get("/v1/models", headers={"Authorization": "Bearer wrong"}).status_code == 401
        response = c.post("/v1/word2vec/similarity", json={"word_a": "king", "word_b": "queen"})
        assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"
        assert c.get("/v1/models", headers={"Authorization": f"Bearer {API_KEY}"}).status_code == 200
        assert c.post("/v1/admin/reload").status_code == 401
        for open_path in ("/", "/health", "/ready", "/metrics", "/docs", "/openapi.json"):
            assert c.get(open_path).status_code == 200, open_path


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


def test_shutdown_finishes_the_requests_in_flight(checkpoint_dir: Path, logs: Path):
    server = Service(checkpoint_dir, logs)
    try:
        with httpx.Client(base_url=server.url, timeout=60) as c, ThreadPoolExecutor(1) as background:
            # Long enough to be caught running: eight samples of the most tokens a request may ask for.
            body = {"prompt": "ROMEO:", "max_new_tokens": 512, "n": 8, "seed": 0}
            reply = background.submit(c.post, "/v1/generate", json=body)
            wait_until(lambda: gauge(server.url, "lineage_inferences_admitted") == 1 or reply.done(),
                       "the generation never started")
            assert not reply.done(), "the generation ended before the shutdown could start"
            server.process.send_signal(signal.SIGTERM)
            response = reply.result(timeout=60)
            assert response.status_code == 200 and len(response.json()["results"]) == 8
            # Once shut down, uvicorn re-raises the signal, so the exit reads as the signal's.
            assert server.process.wait(timeout=30) in (0, -signal.SIGTERM)
            assert "Finished server process" in server.log.read_text()
            with pytest.raises(httpx.TransportError):
                c.get("/health")
    finally:
        server.stop()


@pytest.mark.parametrize(("given", "kept"), [
    ("trace-42", True),
    ("x" * 128, True),
    ("x" * 129, False),  # too long
    ("two\twords", False),  # not printable
    ("next\x85line", False),  # a C1 control character, which HTTP parsers let through
    ("", False),
])
def test_a_request_id_is_echoed_only_when_short_and_printable(live_server: Service, given: str, kept: bool):
    connection = http.client.HTTPConnection("127.0.0.1", live_server.port, timeout=30)
    try:
        connection.request("GET", "/v1/models", headers={"X-Request-ID": given})
        response = connection.getresponse()
        response.read()
    finally:
        connection.close()
    echoed = response.getheader("x-request-id")
    if kept:
        assert echoed == given
    else:
        assert len(echoed) == 32 and all(c in "0123456789abcdef" for c in echoed)
    wait_until(lambda: f'"request_id": "{echoed}"' in live_server.log.read_text(),
               "the access log has no line with the request id sent back")


def test_cors_answers_the_configured_origin_only(strict_server: Service, server: str):
    allowed, other = "http://playground.example", "http://elsewhere.example"
    preflight = {"Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "content-type,authorization"}
    path = "/v1/word2vec/similarity"
    body = {"word_a": "king", "word_b": "queen"}
    with httpx.Client(base_url=strict_server.url, timeout=30) as c:
        response = c.options(path, headers={**preflight, "Origin": allowed})
        assert response.status_code == 200
        assert response.headers["access-control-allow-origin"] == allowed
        assert "POST" in response.headers["access-control-allow-methods"]
        assert "authorization" in response.headers["access-control-allow-headers"].lower()
        response = c.options(path, headers={**preflight, "Origin": other})
        assert response.status_code == 400 and "access-control-allow-origin" not in response.headers
        response = c.post(path, json=body, headers={"Origin": allowed})
        assert response.status_code == 200 and response.headers["access-control-allow-origin"] == allowed
        response = c.post(path, json=body, headers={"Origin": other})
        assert response.status_code == 200 and "access-control-allow-origin" not in response.headers
    with httpx.Client(base_url=server, timeout=30) as c:  # CORS_ORIGINS unset: no origin is answered
        assert "access-control-allow-origin" not in c.options(path, headers={**preflight, "Origin": allowed}).headers
        assert "access-control-allow-origin" not in c.post(path, json=body, headers={"Origin": allowed}).headers


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
    server = Service(checkpoint_dir, logs)
    try:
        httpx.get(server.url + "/v1/models", headers={"X-Request-ID": "trace-42"}, timeout=30)
    finally:
        server.stop()
    records = [json.loads(line) for line in logs.read_text().splitlines() if line.startswith("{")]
    access = [r for r in records if r["request_id"] == "trace-42"]
    assert access and access[0]["route"] == "/v1/models" and access[0]["status"] == 200
    assert any(r["logger"] == "app.registry" and "loaded word2vec-sg" in r["message"] for r in records)


def drop(key: str):  # noqa: ANN201 - a config transformation for copy_checkpoint
    return lambda config: {k: v for k, v in config.items() if k != key}


@pytest.fixture(scope="module")
def odd_server(checkpoint_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """The service on one good word2vec checkpoint, checkpoints it must refuse, two language models that share
    a short name, and a translation model trained without attention."""
    root = tmp_path_factory.mktemp("odd-checkpoints")
    source = checkpoint_dir
    shutil.copytree(source / "word2vec-sg", root / "word2vec-sg")
    truncated = copy_checkpoint(source / "word2vec-cbow", root, "word2vec-cbow") / "model.safetensors"
    truncated.write_bytes(truncated.read_bytes()[:1000])
    pickled = copy_checkpoint(source / "word2vec-cbow", root, "word2vec-pickled")
    torch.save({"input_embeddings.weight": torch.zeros(3, 3)}, pickled / "model.safetensors")
    (copy_checkpoint(source / "word2vec-cbow", root, "word2vec-noconfig") / "config.json").write_text("{oops")
    (copy_checkpoint(source / "word2vec-cbow", root, "word2vec-noweights") / "model.safetensors").unlink()
    (copy_checkpoint(source / "word2vec-cbow", root, "word2vec-badmetrics") / "metrics.json").write_text("{nope")
    copy_checkpoint(source / "word2vec-cbow", root, "word2vec-nomodel", config=drop("model"))
    copy_checkpoint(source / "word2vec-cbow", root, "word2vec-noarch", config=drop("architecture"))
    copy_checkpoint(source / "gpt", root, "gpt-notokenizer", config=drop("tokenizer"))
    copy_checkpoint(source / "word2vec-cbow", root, "word2vec-notensor", weights=lambda tensors: {})
    copy_checkpoint(source / "word2vec-cbow", root, "word2vec-elsewhere", config=lambda c: {**c, "id": "word2vec-sg"})
    copy_checkpoint(source / "word2vec-cbow", root, "glove-x", config=lambda c: {**c, "family": "glove"})
    shutil.copytree(source / "lm-lstm", root / "lm-lstm")
    copy_checkpoint(source / "gpt", root, "gpt-lstm", name="lstm")  # a GPT trained with --name lstm
    plain = copy_checkpoint(source / "seq2seq-zh-en-recurrent", root, "seq2seq-zh-en-plain", name="zh-en-plain",
                            config=lambda c: {**c, "model": {**c["model"], "attention": "none"}})
    weights = reference.untrained_seq2seq_weights(json.loads((plain / "config.json").read_text())["model"])
    save_file(weights, plain / "model.safetensors")
    server = Service(root, tmp_path_factory.mktemp("logs") / "odd-server.log")
    yield server
    server.stop()


REFUSED = {
    "word2vec-cbow": "cannot read model.safetensors",
    "word2vec-pickled": "cannot read model.safetensors",
    "word2vec-noconfig": "config.json is not valid JSON",
    "word2vec-noweights": "no model.safetensors",
    "word2vec-badmetrics": "metrics.json is not valid JSON",
    "word2vec-nomodel": "missing 'model'",
    "word2vec-noarch": "config.json is missing 'architecture'",
    "gpt-notokenizer": "missing 'tokenizer'",
    "word2vec-notensor": 'Missing key(s) in state_dict: "input_embeddings.weight"',
    "word2vec-elsewhere": "directory word2vec-elsewhere holds checkpoint id 'word2vec-sg'",
    "glove-x": "unknown family 'glove'",
}


def test_bad_checkpoints_are_refused_with_their_reason_and_the_rest_served(odd_server: Service):
    with httpx.Client(base_url=odd_server.url, timeout=30) as c:
        ready = c.get("/ready")
        assert ready.status_code == 200
        states = {s["id"]: s for s in ready.json()["checkpoints"]}
        for checkpoint_id, reason in REFUSED.items():
            assert states[checkpoint_id]["status"] == "refused", checkpoint_id
            assert reason in states[checkpoint_id]["reason"], states[checkpoint_id]
        for loaded in ("word2vec-sg", "lm-lstm", "gpt-lstm", "seq2seq-zh-en-plain"):
            assert states[loaded] == {"id": loaded, "status": "loaded", "reason": None, "outdated": None}
        served = {m["id"] for m in c.get("/v1/models").json()["data"]}
        assert served == {"word2vec-sg", "lm-lstm", "gpt-lstm", "seq2seq-zh-en-plain"}
        assert c.post("/v1/word2vec/similarity", json={"word_a": "king", "word_b": "queen"}).status_code == 200
        cbow = c.post("/v1/word2vec/similarity", json={"word_a": "king", "word_b": "queen", "model": "cbow"})
        assert cbow.status_code == 503
    log = odd_server.log.read_text()
    assert all(f"refused checkpoint {checkpoint_id}" in log for checkpoint_id in REFUSED)


def test_a_name_two_language_models_share_is_422_naming_both_and_their_ids_still_work(odd_server: Service):
    with httpx.Client(base_url=odd_server.url, timeout=60) as c:
        response = c.post("/v1/generate", json={"prompt": "ROMEO:", "model": "lstm", "max_new_tokens": 3})
        assert response.status_code == 422
        assert response.json()["detail"] == "'lstm' names several language models; models that fit: gpt-lstm, lm-lstm"
        for checkpoint_id in ("gpt-lstm", "lm-lstm"):
            body = c.post("/v1/generate", json={"prompt": "ROMEO:", "model": checkpoint_id, "max_new_tokens": 3})
            assert body.status_code == 200 and body.json()["model"] == checkpoint_id


def test_a_translation_model_without_attention_translates_but_has_no_heatmap(odd_server: Service):
    with httpx.Client(base_url=odd_server.url, timeout=60) as c:
        request = {"text": "我们明天见。", "model": "zh-en-plain", "max_length": 5}
        result = c.post("/v1/translate", json=request).json()["results"][0]
        assert result["attention"] is None and len(result["target_tokens"]) <= 5
        response = c.post("/v1/translate/attention.png", json=request)
        assert response.status_code == 422
        assert response.json()["detail"] == ("model 'seq2seq-zh-en-plain' was trained without attention; "
                                             "there is nothing to draw")


def test_ready_marks_default_checkpoints_an_earlier_recipe_trained_and_still_serves_them(checkpoint_dir: Path,
                                                                                        tmp_path: Path, logs: Path):
    root = tmp_path / "recipes"
    root.mkdir()
    shutil.copytree(checkpoint_dir / "word2vec-sg", root / "word2vec-sg")
    earlier = shutil.copytree(checkpoint_dir / "word2vec-cbow", root / "word2vec-cbow")
    config = json.loads((earlier / "config.json").read_text())
    config["recipe"]["fingerprint"] = "0" * 16
    (earlier / "config.json").write_text(json.dumps(config))
    # a default id, as written before recipes were recorded
    before = copy_checkpoint(checkpoint_dir / "lm-rnn", root, "lm-gru")
    config = json.loads((before / "config.json").read_text())
    del config["recipe"]
    config["training"] = {"profile": "tiny"}  # where those recorded their profile
    (before / "config.json").write_text(json.dumps(config))
    copy_checkpoint(checkpoint_dir / "lm-rnn", root, "lm-mine")  # not a default checkpoint: no recipe to compare with

    server = Service(root, logs)
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
    server = Service(root, logs)
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


TEXTS = ["love and death", "the king and the queen of the play, and the fool with his crown at night", "sword"]


def served(c: httpx.Client) -> tuple[float, list[dict]]:
    similarity = c.post("/v1/word2vec/similarity", json={"word_a": "king", "word_b": "queen"}).json()["similarity"]
    return similarity, c.post("/v1/classify", json={"texts": TEXTS, "model": "cnn"}).json()["results"]


def expected(root: Path) -> tuple[float, list[dict]]:
    classifier = reference.text_classifier(root, "clf-cnn")
    return (reference.cosine(reference.word_vectors(root, "word2vec-sg"), "king", "queen"),
            [reference.class_probabilities(classifier, text) for text in TEXTS])


def assert_serves(c: httpx.Client, root: Path) -> None:
    similarity, results = served(c)
    cosine, probabilities = expected(root)
    assert similarity == pytest.approx(cosine, abs=1e-5)
    assert [r["probabilities"] for r in results] == [pytest.approx(p, abs=1e-5) for p in probabilities]


def test_reload_drops_deleted_checkpoints_and_serves_new_weights_through_new_batchers(checkpoint_dir: Path,
                                                                                       tmp_path: Path, logs: Path):
    root = tmp_path / "live"
    for checkpoint_id in ("word2vec-sg", "word2vec-cbow", "clf-cnn"):
        shutil.copytree(checkpoint_dir / checkpoint_id, root / checkpoint_id)
    server = Service(root, logs)
    try:
        with httpx.Client(base_url=server.url, timeout=60) as c:
            assert_serves(c, root)  # the classifier's batcher now exists
            before = served(c)
            shutil.rmtree(root / "word2vec-cbow")
            # Other weights under the same ids: CBOW's vectors as word2vec-sg, the LSTM classifier as clf-cnn.
            for checkpoint_id, other in (("word2vec-sg", "word2vec-cbow"), ("clf-cnn", "clf-lstm")):
                shutil.rmtree(root / checkpoint_id)
                copy_checkpoint(checkpoint_dir / other, root, checkpoint_id, name=checkpoint_id.split("-")[1])
            reloaded = c.post("/v1/admin/reload")
            assert reloaded.status_code == 200
            states = reloaded.json()["checkpoints"]
            assert [(s["id"], s["status"], s["reason"]) for s in states] == [("clf-cnn", "loaded", None),
                                                                             ("word2vec-sg", "loaded", None)]
            # each now holds what another default checkpoint's recipe trained
            assert all(s["outdated"].startswith("trained by recipe ") for s in states), states
            assert {m["id"] for m in c.get("/v1/models").json()["data"]} == {"clf-cnn", "word2vec-sg"}
            cbow = c.post("/v1/word2vec/similarity", json={"word_a": "king", "word_b": "queen", "model": "cbow"})
            assert cbow.status_code == 503
            assert_serves(c, root)
            assert served(c) != before
    finally:
        server.stop()


def test_a_stream_in_flight_during_a_reload_keeps_the_weights_it_started_with(checkpoint_dir: Path,
                                                                             tmp_path: Path, logs: Path):
    root = tmp_path / "live"
    shutil.copytree(checkpoint_dir / "gpt", root / "gpt")
    server = Service(root, logs, MAX_NEW_TOKENS="20000")
    body = {"prompt": "ROMEO:\n", "seed": 5}
    try:
        with httpx.Client(base_url=server.url, timeout=60) as c:
            # The first 1,500 tokens of the stream below, as the weights it starts with give them (about 1 s
            # of work on an idle core: the reload lands well inside them).
            old = c.post("/v1/generate", json={**body, "max_new_tokens": 1500}).json()["results"][0]["text"]
            with c.stream("POST", "/v1/generate", json={**body, "max_new_tokens": 20000, "stream": True}) as stream:
                lines = stream.iter_lines()  # kept: a dropped iterator closes the response
                text = json.loads(next(line for line in lines if line.startswith("data: "))[6:])["text"]
                shutil.rmtree(root / "gpt")
                copy_checkpoint(checkpoint_dir / "gpt", root, "gpt",
                                weights=lambda tensors: {**tensors, "wte.weight": tensors["wte.weight"] * 2})
                assert c.post("/v1/admin/reload").status_code == 200
                for line in lines:
                    if line.startswith("data: "):
                        text += json.loads(line[6:]).get("text", "")
                    if len(text) >= len(old):
                        break
            assert text[:len(old)] == old
            new = c.post("/v1/generate", json={**body, "max_new_tokens": 1500}).json()["results"][0]["text"]
            assert new != old
    finally:
        server.stop()


def test_docker_entrypoint_serves_the_checkpoints(checkpoint_dir: Path, logs: Path):
    server = Service(checkpoint_dir, logs, command=["sh", str(ROOT / "docker" / "entrypoint.sh")],
                    PYTHON=sys.executable)
    try:
        ready = httpx.get(server.url + "/ready", timeout=30)
        assert ready.status_code == 200 and ready.json()["ready"] is True
    finally:
        server.stop()


def test_pool_answers_429_past_capacity_and_504_past_the_timeout():
    async def scenario() -> None:
        pool = InferencePool(max_concurrent=1, max_queued=0, timeout=60)
        async with pool.slot():
            with pytest.raises(OverCapacity) as refused:
                await pool.run(lambda: 1)
            assert refused.value.status_code == 429 and refused.value.headers["Retry-After"] == "1"
        assert await pool.run(lambda: 41 + 1) == 42
        pool.timeout = 0.2
        release = threading.Event()  # the work never ends before the timeout: it waits for this
        with pytest.raises(InferenceTimeout) as late:
            await pool.run(lambda: release.wait(60))
        release.set()
        assert late.value.status_code == 504
        assert pool.admitted == 0

    asyncio.run(scenario())
