"""``python -m training`` as a user runs it: which checkpoints ``all`` trains, and clear errors (exit code 2,
no traceback) for what cannot be done."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from models.checkpoint import load_checkpoint
from training.cli import main
from training.loop import STATE_FORMAT

from .conftest import ROOT

GPT_RESUME = ["gpt", "--profile", "tiny", "--device", "cpu", "--max-steps", "2", "--resume"]


def fingerprint(path: Path) -> tuple[str, bytes]:
    return load_checkpoint(path).config["created"], (path / "model.safetensors").read_bytes()


def test_all_missing_trains_only_the_absent_or_unreadable_and_only_restricts_to_the_ids_given(
        checkpoint_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("PROGRESS", "0")
    caplog.set_level(logging.INFO, logger="training")
    out = tmp_path / "checkpoints"
    for checkpoint_id in ("lm-lstm", "lm-rnn"):
        shutil.copytree(checkpoint_dir / checkpoint_id, out / checkpoint_id)
    (out / "lm-rnn" / "config.json").write_text("{broken")
    before = fingerprint(out / "lm-lstm")

    assert main(["all", "--profile", "tiny", "--missing", "--only", "lm-lstm", "lm-rnn", "clf-mlp",
                 "--out", str(out)]) == 0
    # the two trained keep their training state beside them
    assert sorted(p.name for p in out.iterdir()) == [".clf-mlp-train-state", ".lm-rnn-train-state", "clf-mlp",
                                                     "lm-lstm", "lm-rnn"]
    assert fingerprint(out / "lm-lstm") == before  # present and readable: left alone
    load_checkpoint(out / "lm-rnn")  # unreadable: trained again
    assert "lm-lstm: trained by today's tiny recipe, skipped" in caplog.text
    assert "lm-rnn: python -m training lm --cell rnn --profile tiny" in caplog.text

    caplog.clear()
    assert main(["all", "--profile", "tiny", "--only", "lm-lstm", "--out", str(out)]) == 0
    assert fingerprint(out / "lm-lstm") != before  # without --missing, trained again
    assert "lm-lstm: trained in" in caplog.text and "lm-rnn" not in caplog.text


def test_all_trains_both_translation_directions_side_by_side_in_processes_of_their_own(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("PROGRESS", "0")
    monkeypatch.delenv("TORCH_THREADS", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    caplog.set_level(logging.INFO, logger="training")
    started = []
    popen = subprocess.Popen

    def spy(command: list[str], **kwargs) -> subprocess.Popen:
        started.append(command[command.index("--direction") + 1])
        return popen(command, cwd=ROOT, **kwargs)

    monkeypatch.setattr(subprocess, "Popen", spy)
    out = tmp_path / "checkpoints"
    assert main(["all", "--profile", "tiny", "--only", "seq2seq-zh-en", "seq2seq-en-zh", "--out", str(out)]) == 0
    assert started == ["zh-en", "en-zh"]
    for direction in ("zh-en", "en-zh"):
        assert load_checkpoint(out / f"seq2seq-{direction}").config["name"] == direction
        assert f"seq2seq-{direction}: trained in" in caplog.text


def test_all_only_with_an_unknown_id_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture):
    with pytest.raises(SystemExit) as exit_:
        main(["all", "--profile", "tiny", "--only", "lm-lstm", "gpt-huge", "--out", str(tmp_path)])
    assert exit_.value.code == 2
    assert "unknown checkpoint ids: gpt-huge" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_resume_without_a_saved_state_exits_2_saying_so_without_a_traceback(tmp_path: Path):
    result = subprocess.run([sys.executable, "-m", "training", *GPT_RESUME, "--out", str(tmp_path)], cwd=ROOT,
                            env={**os.environ, "PROGRESS": "0"}, capture_output=True, text=True, timeout=600)
    assert result.returncode == 2, result.stderr
    assert f"error: --resume: no training state at {tmp_path / '.gpt-train-state' / 'state.pt'}" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(("content", "message"), [
    (b"not a state at all", "is not a training state (UnpicklingError)"),
    (b"", "is not a training state"),
    ({"format": 99, "step": 3}, f"has format 99, expected {STATE_FORMAT}"),
    ({"format": STATE_FORMAT - 1, "step": 3}, f"has format {STATE_FORMAT - 1}, expected {STATE_FORMAT}"),
    (torch.zeros(3), f"has format 'Tensor', expected {STATE_FORMAT}"),
])
def test_resume_from_a_state_of_another_format_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                                  content: object, message: str):
    state = tmp_path / ".gpt-train-state" / "state.pt"
    state.parent.mkdir()
    if isinstance(content, bytes):
        state.write_bytes(content)
    else:
        torch.save(content, state)
    assert main([*GPT_RESUME, "--out", str(tmp_path)]) == 2
    assert f"error: --resume: {state} {message}" in capsys.readouterr().err
