"""Named checkpoints: every trainer's --name; training on the user's own data lands beside the default checkpoint
under a name derived from the data file, never over it unless --force; and the service answers by those names."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from models.catalog import DEFAULT_IDS, checkpoint_id_of
from training.common import checkpoint_name
from training.data import load_hsk_pairs, load_plays

from .conftest import ROOT, Service, run_training


def training(*args: str) -> subprocess.CompletedProcess:
    """``python -m training ...``, whatever its exit status."""
    return subprocess.run([sys.executable, "-m", "training", *args], cwd=ROOT, env={**os.environ, "PROGRESS": "0"},
                          capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A user's own files: plain text, labelled passages, and sentence pairs."""
    root = tmp_path_factory.mktemp("user-data")
    plays = load_plays()[:4]
    lines = [line for play in plays for speech in play.speeches for line in speech.lines][:3000]
    (root / "My Text!.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    rows = [f"{play.genre}\t{speech.text}" for play in load_plays()[:12] for speech in play.speeches[:40]
            if len(speech.text.split()) > 5]
    (root / "mine.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    (root / "pairs.tsv").write_text("\n".join(f"{zh}\t{en}" for zh, en in load_hsk_pairs()[:400]) + "\n",
                                    encoding="utf-8")
    return {"corpus": root / "My Text!.txt", "labeled": root / "mine.tsv", "pairs": root / "pairs.tsv"}


# trainer -> (its flags, the flag of its own data, the data, the id that data gets, the default checkpoint's name)
TRAINERS = {
    "word2vec": (["word2vec", "--mode", "cbow"], "--corpus", "corpus", "word2vec-cbow-my-text", "cbow"),
    "gpt": (["gpt", "--max-steps", "4"], "--corpus", "corpus", "gpt-my-text", "gpt"),
    "bert": (["bert", "--max-steps", "4"], "--corpus", "corpus", "bert-my-text", "bert"),
    "lm": (["lm", "--cell", "gru", "--max-steps", "4"], "--corpus", "corpus", "lm-gru-my-text", "gru"),
    "classifier": (["classifier", "--arch", "cnn"], "--labeled", "labeled", "clf-cnn-mine", "cnn"),
    "seq2seq": (["seq2seq", "--direction", "en-zh"], "--pairs", "pairs", "seq2seq-en-zh-pairs", "en-zh"),
}


@pytest.fixture(scope="module")
def trained(data: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Each trainer on the user's own data: with no --name, and with --name mine."""
    out = tmp_path_factory.mktemp("named")
    for flags, flag, kind, *_ in TRAINERS.values():
        for naming in ([], ["--name", "mine"]):
            run_training(*flags, flag, str(data[kind]), *naming, "--profile", "tiny", "--out", str(out))
    return out


@pytest.mark.parametrize("trainer", TRAINERS)
def test_own_data_trains_a_checkpoint_named_after_the_file_beside_the_default(trained: Path, trainer: str):
    *_, checkpoint_id, _ = TRAINERS[trainer]
    config = json.loads((trained / checkpoint_id / "config.json").read_text())
    assert config["id"] == checkpoint_id and config["data"]["licence"] == "as supplied by the user"
    assert checkpoint_id_of(config["family"], config["name"]) == checkpoint_id
    assert not any((trained / default).exists() for default in DEFAULT_IDS)


@pytest.mark.parametrize("trainer", TRAINERS)
def test_every_trainer_takes_a_name(trained: Path, trainer: str):
    family = json.loads((trained / TRAINERS[trainer][3] / "config.json").read_text())["family"]
    config = json.loads((trained / checkpoint_id_of(family, "mine") / "config.json").read_text())
    assert config["name"] == "mine" and config["id"] == checkpoint_id_of(family, "mine")


@pytest.mark.parametrize("trainer", TRAINERS)
def test_naming_a_default_checkpoint_for_own_data_is_refused_without_force(data: dict[str, Path], tmp_path: Path,
                                                                          trainer: str):
    flags, flag, kind, _, default_name = TRAINERS[trainer]
    result = training(*flags, flag, str(data[kind]), "--name", default_name, "--profile", "tiny",
                      "--out", str(tmp_path))
    assert result.returncode == 2, result.stdout + result.stderr
    assert "is a default checkpoint" in result.stderr and "--force" in result.stderr
    assert not [p for p in tmp_path.iterdir()]  # refused before anything is written


def test_force_trains_own_data_into_the_default_checkpoint(data: dict[str, Path], tmp_path: Path):
    run_training("word2vec", "--corpus", str(data["corpus"]), "--force", "--profile", "tiny", "--out", str(tmp_path))
    config = json.loads((tmp_path / "word2vec-sg" / "config.json").read_text())
    assert config["name"] == "sg" and config["data"]["file"] == str(data["corpus"].resolve())


@pytest.mark.parametrize("name", ["../up", ".hidden", "a b", "-dash", "x" * 70])
def test_a_name_the_service_could_not_address_is_refused(name: str):
    args = argparse.Namespace(name=name, force=False)
    with pytest.raises(ValueError, match="a name is letters, digits"):
        checkpoint_name(args, "gpt", "gpt", None)


def test_a_long_file_name_is_cut_to_an_id_of_64_characters(tmp_path: Path):
    args = argparse.Namespace(name=None, force=False)
    name = checkpoint_name(args, "word2vec", "sg", tmp_path / ("Ü" + "a" * 100 + ".txt"))
    assert checkpoint_id_of("word2vec", name) == ("word2vec-sg-" + "a" * 100)[:64]


# ---- served by those names -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def named_client(trained: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    server = Service(trained, tmp_path_factory.mktemp("logs") / "named-server.log")
    with httpx.Client(base_url=server.url, timeout=60) as client:
        yield client
    server.stop()


@pytest.mark.parametrize("path, body, name, checkpoint_id", [
    ("/v1/word2vec/similarity", {"word_a": "king", "word_b": "lord"}, "cbow-my-text", "word2vec-cbow-my-text"),
    ("/v1/embeddings", {"input": "the king"}, "cbow-my-text", "word2vec-cbow-my-text"),
    ("/v1/embeddings", {"input": "the king"}, "my-text", "bert-my-text"),
    ("/v1/fill-mask", {"text": "the [MASK] is dead"}, "my-text", "bert-my-text"),
    ("/v1/generate", {"prompt": "KING:", "max_new_tokens": 3}, "gru-my-text", "lm-gru-my-text"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Hark"}], "max_tokens": 3}, "gpt-my-text",
     "gpt-my-text"),
    ("/v1/classify", {"text": "my lord, the king"}, "cnn-mine", "clf-cnn-mine"),
    ("/v1/translate", {"text": "he is a student.", "direction": "en-zh"}, "en-zh-pairs", "seq2seq-en-zh-pairs"),
])
def test_the_service_answers_by_the_derived_name_or_id(named_client: httpx.Client, path: str, body: dict, name: str,
                                                     checkpoint_id: str):
    for model in (name, checkpoint_id):
        response = named_client.post(path, json={**body, "model": model})
        assert response.status_code == 200, response.text
        assert response.json()["model"] == checkpoint_id
    card = named_client.get(f"/v1/models/{checkpoint_id}").json()
    assert card["id"] == checkpoint_id and card["training_data"]["licence"] == "as supplied by the user"
