"""The trainers under torchrun: two CPU processes (gloo) train as one process does with the same global
batch, write one checkpoint, and a distributed run stopped and resumed repeats an uninterrupted one."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from models.bert import load as load_bert
from models.bert import load_tokenizer
from models.checkpoint import load_checkpoint
from models.gpt import load as load_gpt
from models.pipelines import FillMask
from models.pipelines.translation import load as load_translator
from training.data import load_plays
from training.loop import state_dir

from .test_loop import labeled

ROOT = Path(__file__).resolve().parent.parent
ONE = [sys.executable]
TWO = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
CPU = torch.device("cpu")

# A small character model on the start of the plays. The learning rate is constant after warm-up
# (--min-lr = --lr), so a run stopped at step 6 and resumed follows the schedule of one run to step 12.
GPT = ("--profile", "tiny", "--device", "cpu", "--tokenizer", "char", "--train-chars", "60000",
       "--val-chars", "6000", "--block-size", "32", "--batch-size", "8", "--max-seconds", "0",
       "--precision", "fp32", "--lr", "3e-3", "--min-lr", "3e-3", "--force")
# No warm-up and no decay: a constant rate, so a run stopped at step 4 and resumed follows one run to step 8.
BERT = ("--profile", "tiny", "--device", "cpu", "--vocab-size", "300", "--batch-size", "8", "--max-steps", "8",
        "--precision", "fp32", "--eval-pairs", "32", "--warmup", "0", "--decay", "0", "--force")
# Dropout off: each process draws its own masks, so only without it can two processes repeat one.
SEQ2SEQ = ("--arch", "recurrent", "--profile", "tiny", "--device", "cpu", "--max-train-pairs", "256",
           "--batch-size", "32", "--epochs", "3", "--patience", "3", "--dropout", "0", "--precision", "fp32")


def train(launcher: list[str], family: str, out: Path, *flags: str) -> None:
    result = subprocess.run([*launcher, "-m", "training", family, *flags, "--out", str(out)],
                            cwd=ROOT, env={**os.environ, "PROGRESS": "0"}, capture_output=True, text=True,
                            timeout=300)
    if result.returncode != 0:
        pytest.fail(f"{' '.join(launcher)} -m training {family} failed:\n{result.stdout}\n{result.stderr}")


def history(out: Path, checkpoint_id: str) -> dict[str, list]:
    return json.loads((state_dir(out, checkpoint_id) / "history.json").read_text())


def gpt_losses(out: Path) -> list[float]:
    return history(out, "gpt")["loss"]


@pytest.fixture(scope="module")
def plays(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "plays.txt"
    path.write_text("".join(p.render() for p in load_plays()[:2]), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def gpt_two(tmp_path_factory: pytest.TempPathFactory, plays: Path) -> Path:
    """12 steps on two processes, each taking 4 of the 8 sequences in two micro-batches of 2."""
    out = tmp_path_factory.mktemp("gpt-two")
    train(TWO, "gpt", out, *GPT, "--corpus", str(plays), "--max-steps", "12", "--micro-batch-size", "2")
    return out


def test_gpt_on_two_processes_matches_one_with_the_same_global_batch(tmp_path: Path, plays: Path,
                                                                     gpt_two: Path) -> None:
    train(ONE, "gpt", tmp_path, *GPT, "--corpus", str(plays), "--max-steps", "12")
    single, double = gpt_losses(tmp_path), gpt_losses(gpt_two)
    assert len(double) == len(single) == 12
    assert double == pytest.approx(single, abs=1e-3)
    assert single[-1] < single[0]

    checkpoint = load_checkpoint(gpt_two / "gpt")  # written once, by rank 0
    assert checkpoint.config["training"]["world_size"] == 2
    assert checkpoint.metrics["steps"] == 12 and checkpoint.metrics["val_bpc"] > 0
    assert checkpoint.metrics["tokens_per_second"] > 0
    assert sorted(p.name for p in gpt_two.iterdir()) == [".gpt-train-state", "gpt"]
    load_gpt(checkpoint, CPU)


def test_gpt_on_two_processes_stopped_and_resumed_repeats_the_uninterrupted_run(tmp_path: Path, plays: Path,
                                                                                 gpt_two: Path) -> None:
    flags = (*GPT, "--corpus", str(plays), "--micro-batch-size", "2")
    train(TWO, "gpt", tmp_path, *flags, "--max-steps", "6")
    assert torch.load(state_dir(tmp_path, "gpt") / "state.pt", weights_only=True)["step"] == 6
    train(TWO, "gpt", tmp_path, *flags, "--max-steps", "12", "--resume")
    assert history(tmp_path, "gpt")["step"] == list(range(1, 13))
    assert gpt_losses(tmp_path) == pytest.approx(gpt_losses(gpt_two), abs=1e-6)
    assert load_checkpoint(tmp_path / "gpt").metrics["steps"] == 12


def test_gpt_state_saved_by_two_processes_resumes_on_one(tmp_path: Path, plays: Path, gpt_two: Path) -> None:
    """Another number of processes continues the same batch stream (each process draws fresh dropout)."""
    out = tmp_path / "out"
    shutil.copytree(gpt_two, out)
    train(ONE, "gpt", out, *GPT, "--corpus", str(plays), "--max-steps", "16", "--resume")
    resumed = history(out, "gpt")
    assert resumed["step"] == list(range(1, 17))
    assert resumed["loss"][:12] == gpt_losses(gpt_two)
    checkpoint = load_checkpoint(out / "gpt")
    assert checkpoint.metrics["steps"] == 16 and checkpoint.config["training"]["world_size"] == 1


@pytest.fixture(scope="module")
def bert_two(tmp_path_factory: pytest.TempPathFactory, plays: Path) -> Path:
    """8 steps on two processes, each taking 4 of the 8 pairs in micro-batches of 3 and 1: the loss is
    weighed by masked tokens, not pieces."""
    out = tmp_path_factory.mktemp("bert-two")
    train(TWO, "bert", out, *BERT, "--corpus", str(plays), "--micro-batch-size", "3")
    return out


def test_bert_on_two_processes_matches_one_with_the_same_global_batch(tmp_path: Path, plays: Path,
                                                                      bert_two: Path) -> None:
    train(ONE, "bert", tmp_path, *BERT, "--corpus", str(plays))
    single, double = load_checkpoint(tmp_path / "bert"), load_checkpoint(bert_two / "bert")
    assert len(history(bert_two, "bert")["loss"]) == len(history(tmp_path, "bert")["loss"]) == 8
    assert history(bert_two, "bert")["loss"] == pytest.approx(history(tmp_path, "bert")["loss"], abs=1e-4)
    assert double.metrics["mlm_loss"] == pytest.approx(single.metrics["mlm_loss"], abs=1e-4)

    assert double.config["training"]["world_size"] == 2 and double.metrics["tokens_per_second"] > 0
    assert sorted(p.name for p in bert_two.iterdir()) == [".bert-train-state", "bert"]
    FillMask(load_bert(double, CPU), load_tokenizer(double), CPU).fill_mask("to be or not to [MASK]")


def test_bert_on_two_processes_stopped_and_resumed_repeats_the_uninterrupted_run(tmp_path: Path, plays: Path,
                                                                                  bert_two: Path) -> None:
    flags = (*BERT, "--corpus", str(plays), "--micro-batch-size", "3")
    train(TWO, "bert", tmp_path, *flags, "--max-steps", "4")
    assert torch.load(state_dir(tmp_path, "bert") / "state.pt", weights_only=True)["step"] == 4
    train(TWO, "bert", tmp_path, *flags, "--max-steps", "8", "--resume")
    resumed, straight = history(tmp_path, "bert"), history(bert_two, "bert")
    assert resumed["step"] == list(range(1, 9))
    assert resumed["loss"] == pytest.approx(straight["loss"], abs=1e-6)
    assert load_checkpoint(tmp_path / "bert").config["training"]["steps"] == 8


def test_seq2seq_on_two_processes_matches_one_with_the_same_global_batch(tmp_path: Path) -> None:
    train(ONE, "seq2seq", tmp_path / "one", *SEQ2SEQ)
    # 16 pairs a process, in micro-batches of 5, 5, 5 and 1.
    train(TWO, "seq2seq", tmp_path / "two", *SEQ2SEQ, "--micro-batch-size", "5")
    single, double = (load_checkpoint(tmp_path / run / "seq2seq-zh-en-recurrent") for run in ("one", "two"))
    evaluations = [c.metrics["evaluations"] for c in (single, double)]
    for one, two in zip(*evaluations, strict=True):
        assert two["train_loss"] == pytest.approx(one["train_loss"], abs=1e-3)
        assert two["val_loss"] == pytest.approx(one["val_loss"], abs=1e-3)
    assert len(evaluations[1]) == 3

    assert double.config["training"]["world_size"] == 2 and double.metrics["tokens_per_second"] > 0
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == [".seq2seq-zh-en-recurrent-train-state",
                                                                  "seq2seq-zh-en-recurrent"]
    assert load_translator(double, CPU).translate(["我爱你。"])[0].translation


# Without dropout: each process draws its own dropout masks, so only without it can two processes repeat one.
ALSO_ON_THE_LOOP = {
    "lm": (("lm", "--cell", "gru", "--max-steps", "8", "--batch-size", "8", "--max-seconds", "0"), "lm-gru"),
    "classifier": (("classifier", "--arch", "mlp", "--epochs", "2", "--batch-size", "16", "--dropout", "0"),
                   "clf-mlp"),
}


@pytest.mark.parametrize("trainer", sorted(ALSO_ON_THE_LOOP))
def test_the_other_trainers_on_two_processes_match_one(trainer: str, tmp_path: Path) -> None:
    (family, *flags), checkpoint_id = ALSO_ON_THE_LOOP[trainer]
    flags = [*flags, "--profile", "tiny", "--device", "cpu", "--precision", "fp32"]
    if trainer == "classifier":
        flags += ["--labeled", str(labeled(tmp_path / "toy.tsv")), "--force"]
    train(ONE, family, tmp_path / "one", *flags)
    train(TWO, family, tmp_path / "two", *flags, "--micro-batch-size", "3")
    single, double = history(tmp_path / "one", checkpoint_id), history(tmp_path / "two", checkpoint_id)
    assert len(double["loss"]) == len(single["loss"]) >= 8
    assert double["loss"] == pytest.approx(single["loss"], abs=1e-4)
    assert load_checkpoint(tmp_path / "two" / checkpoint_id).config["training"]["world_size"] == 2
