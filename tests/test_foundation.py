"""The shared parts: the play split, the checkpoint format, the CLI."""

from __future__ import annotations

import json

import pytest
import torch

from models.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from training import data
from training.cli import main


def test_play_split_is_disjoint_complete_stratified_and_fixed():
    split = data.play_split()
    parts = [set(split.train), set(split.validation), set(split.test)]
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    assert set().union(*parts) == {p.slug for p in data.load_plays()}
    genres = {p.slug: p.genre for p in data.load_plays()}
    for part in (split.test, split.validation):
        assert {genres[s] for s in part} == set(data.GENRE_LABELS)
    assert data.play_split() == split
    assert data.play_split(seed=1) != split


def test_plays_parse_into_speaker_labelled_speeches():
    plays = data.load_plays()
    assert len(plays) == 38
    hamlet = next(p for p in plays if p.slug == "hamlet")
    assert hamlet.title == "Hamlet" and hamlet.genre == "tragedy"
    first = hamlet.speeches[0]
    assert (first.speaker, first.lines) == ("BERNARDO", ("Who's there?",))
    assert hamlet.render().startswith("BERNARDO:\nWho's there?\n\nFRANCISCO:\n")
    assert not any(line.startswith("_") for s in hamlet.speeches for line in s.lines)


def test_hsk_pairs_drop_placeholders_and_duplicates():
    pairs = data.load_hsk_pairs()
    assert 4200 < len(pairs) < 4354
    assert not any(en.lower().startswith("placeholder") for _, en in pairs)
    assert len({zh for zh, _ in pairs}) == len(pairs)


def test_split_text_cuts_the_last_fraction_on_a_line_boundary():
    train, validation = data.split_text("a\nb\nc\nd\ne\nf\ng\nh\ni\nj\n", 0.2)
    assert train + validation == "a\nb\nc\nd\ne\nf\ng\nh\ni\nj\n"
    assert validation == "i\nj\n"
    with pytest.raises(ValueError):
        data.split_text("abc", 1.5)


def _save(root, **config):
    return save_checkpoint(root, {"id": "toy-a", "family": "toy", "architecture": "toy", **config},
                           {"w": torch.ones(2, 2)}, {"score": 1.0}, {"vocab.json": "[]"})


def test_checkpoint_round_trip_and_atomic_replace(tmp_path):
    path = _save(tmp_path, model={"n": 1})
    checkpoint = load_checkpoint(path)
    assert checkpoint.config["format_version"] == 1 and checkpoint.config["versions"]["torch"]
    assert torch.equal(checkpoint.state_dict["w"], torch.ones(2, 2))
    assert checkpoint.metrics == {"score": 1.0}
    _save(tmp_path, model={"n": 2})
    assert load_checkpoint(path).config["model"] == {"n": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["toy-a"]  # no staging or old copy left


def test_checkpoint_loading_refuses_truncated_foreign_and_pickled_files(tmp_path):
    path = _save(tmp_path)
    weights = path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:20])
    with pytest.raises(CheckpointError):
        load_checkpoint(path)
    torch.save({"w": torch.ones(1)}, weights)  # a pickle where safetensors belongs
    with pytest.raises(CheckpointError):
        load_checkpoint(path)
    (path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError):
        load_checkpoint(path)
    (path / "config.json").write_text(json.dumps({"format_version": 99, "id": "toy-a", "family": "toy",
                                                  "architecture": "toy"}))
    with pytest.raises(CheckpointError, match="format version"):
        load_checkpoint(path)


def test_cli_reports_missing_corpus_as_an_error(tmp_path, capsys):
    code = main(["word2vec", "--profile", "tiny", "--corpus", str(tmp_path / "nope.txt"), "--out", str(tmp_path)])
    assert code == 2
    assert "corpus file not found" in capsys.readouterr().err
