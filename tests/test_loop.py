"""The shared training loop: its schedule, resuming any trainer on it, and the recipe every checkpoint
records, which `all --missing` and /ready compare with today's."""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from models.catalog import CATALOG, default_recipes
from models.checkpoint import load_checkpoint
from training import gpt
from training.cli import (
    build_parser,
    default_arguments,
    default_fingerprints,
    family_module,
    main,
    side_by_side,
)
from training.loop import Batch, Run, Schedule, Settings, state_dir, total_steps
from training.recipe import recipe

from .conftest import interrupted_after_saving, run_training


def test_schedule_warms_up_then_decays_over_the_steps_or_the_clock_whichever_is_further():
    cosine = Schedule(lr=1.0, min_lr=0.1, warmup_steps=10)
    assert cosine.rate(0, 110) == pytest.approx(0.1) and cosine.rate(9, 110) == pytest.approx(1.0)
    assert cosine.rate(60, 110) == pytest.approx(0.55) and cosine.rate(110, 110) == pytest.approx(0.1)
    assert cosine.rate(20, 110, time_fraction=1.0) == pytest.approx(0.1)  # the time budget is spent
    assert cosine.rate(60, 110, time_fraction=0.2) == pytest.approx(0.55)  # the steps are further along
    linear = Schedule(lr=1.0, warmup_steps=5, decay="linear", hold=0.5)
    assert linear.rate(40, 105) == 1.0 and linear.rate(80, 105) == pytest.approx(0.5)
    assert Schedule(lr=2.0, decay="none").rate(99, 100, time_fraction=1.0) == 2.0
    assert cosine.rate(5000, None, time_fraction=0.5) == pytest.approx(0.55)  # no step limit: the clock alone


def parse(*argv: str):
    args = build_parser().parse_args(list(argv))
    return family_module(args.command).resolve_arguments(args)


def test_max_seconds_alone_drops_the_profiles_step_cap_and_max_steps_beside_it_keeps_one():
    for family in (("gpt",), ("lm", "--cell", "gru")):
        assert parse(*family).max_steps > 0  # the profile's cap, with the profile's own budget
        assert total_steps(parse(*family, "--max-seconds", "70"), 100) is None
        assert parse(*family, "--max-seconds", "70", "--max-steps", "50").max_steps == 50


def test_max_seconds_on_the_command_line_shapes_the_gpt_for_the_budget_and_only_there():
    quick = parse("gpt")
    assert {k: getattr(quick, k) for k in gpt.PROFILES["quick"]} == gpt.PROFILES["quick"]  # the served GPT
    for seconds in ("70", "1000"):
        shaped = parse("gpt", "--max-seconds", seconds)
        assert {k: getattr(shaped, k) for k in gpt.for_budget(float(seconds))} == gpt.for_budget(float(seconds))
        assert shaped.max_seconds == float(seconds) and shaped.tokenizer == "bpe"  # the rest: the profile's
    assert gpt.for_budget(70) != gpt.for_budget(1000)
    assert gpt.for_budget(70) == gpt.BUDGET_RULE[0][1] and gpt.for_budget(1e9) == gpt.BUDGET_RULE[-1][1]
    mine = parse("gpt", "--max-seconds", "70", "--n-embd", "96", "--lr", "5e-4")
    assert (mine.n_embd, mine.lr, mine.n_layer) == (96, 5e-4, gpt.for_budget(70)["n_layer"])  # flags still win


def test_a_gpt_run_given_max_seconds_trains_until_the_clock_runs_out_and_decays_with_it(tmp_path: Path):
    corpus = tmp_path / "text.txt"
    corpus.write_text("".join(f"LINE {i}: to be or not to be, that is the question.\n" for i in range(400)))
    flags = ("--n-layer", "1", "--n-head", "1", "--n-embd", "16", "--block-size", "16", "--batch-size", "2")
    run_training("gpt", "--profile", "tiny", "--corpus", str(corpus), "--tokenizer", "char", "--out", str(tmp_path),
                 "--name", "clock", "--max-seconds", "3", "--lr", "1e-2", "--min-lr", "1e-3", *flags)
    metrics = json.loads((tmp_path / "gpt-clock" / "metrics.json").read_text())
    assert metrics["steps"] > gpt.PROFILES["tiny"]["max_steps"] and metrics["train_seconds"] >= 3
    lr = json.loads((state_dir(tmp_path, "gpt-clock") / "history.json").read_text())["lr"]
    assert max(lr) == pytest.approx(1e-2) and lr[-1] < 1.5e-3  # the cosine reached its floor when time ran out


def test_a_task_reads_the_share_of_its_seconds_that_the_run_has_spent(tmp_path: Path):
    args = parse("lm", "--cell", "rnn", "--profile", "tiny", "--out", str(tmp_path), "--max-seconds", "0.3",
                 "--eval-interval", "0")
    spent: list[float] = []

    class Clocked:
        model = torch.nn.Linear(1, 1)

        def batches(self) -> Iterator[Batch]:
            while True:
                spent.append(run.budget_spent)
                time.sleep(0.02)
                yield Batch(torch.ones(1, 1), 1, 1)

        def loss(self, model: torch.nn.Module, data: torch.Tensor, rows: list[int]) -> torch.Tensor:
            return model(data[rows]).sum()

        def validate(self, model: torch.nn.Module) -> dict[str, float]:
            return {}

    with Run(args, "lm-clocked") as run:
        run.fit(Clocked(), Settings(None, Schedule(1e-3)), rebuild={})
    assert spent[0] == 0.0 and spent == sorted(spent) and 0.5 < spent[-1] < 1.0  # each step's, before it trains


def test_the_quick_profiles_stop_on_the_clock_so_that_make_serve_trains_in_under_fifteen_minutes(
        monkeypatch: pytest.MonkeyPatch):
    """On the machine the profiles were measured on, their steps or epochs end each run (their seconds are
    about 1.1-1.4x what those take there); on a slower one the seconds do, so that the default training keeps
    within make serve's 15 minutes on 2 cores: the runs' budgets, the side-by-side ones counted once,
    leave two minutes for word2vec, the tokenizers and the final evaluations."""
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.delenv("TORCH_THREADS", raising=False)
    parser = build_parser()
    budgets: dict[str, float] = {}
    for entry in (e for e in CATALOG if e.default and e.family != "word2vec"):  # word2vec: seconds of epochs
        seconds = default_arguments(parser, entry, "quick", Path("checkpoints")).max_seconds
        assert seconds > 0, f"{entry.id}: the quick profile has no --max-seconds"
        key = entry.family if side_by_side(entry) else entry.id  # one process per core, as `all` trains them
        budgets[key] = max(budgets.get(key, 0.0), seconds)
    assert sum(budgets.values()) <= 13 * 60, budgets


def test_a_recipe_is_what_a_run_learns_not_where_or_how_fast_it_runs(tmp_path: Path):
    base = recipe(parse("lm", "--cell", "gru", "--profile", "tiny", "--out", str(tmp_path / "a")))
    placed = recipe(parse("lm", "--cell", "gru", "--profile", "tiny", "--out", str(tmp_path / "b"), "--device", "cpu",
                          "--micro-batch-size", "4", "--compile", "--save-interval", "7"))
    assert placed == base and base["settings"]["hidden_size"] == 64  # the profile applied
    for changed in (("--profile", "tiny", "--lr", "0.5"), ("--profile", "quick")):
        assert recipe(parse("lm", "--cell", "gru", *changed))["fingerprint"] != base["fingerprint"]


def test_the_service_reads_todays_default_recipes():
    assert default_fingerprints(build_parser()) == default_recipes(), \
        "models/recipes.json is out of date: run `python -m training recipes --write`"


def test_all_missing_trains_again_only_what_an_earlier_recipe_made(checkpoint_dir: Path, tmp_path: Path):
    for checkpoint_id in ("lm-rnn", "lm-gru"):
        shutil.copytree(checkpoint_dir / checkpoint_id, tmp_path / checkpoint_id)
    config_path = tmp_path / "lm-rnn" / "config.json"
    config = json.loads(config_path.read_text())
    today, config["recipe"]["fingerprint"] = config["recipe"]["fingerprint"], "0" * 16
    config_path.write_text(json.dumps(config))
    kept = load_checkpoint(tmp_path / "lm-gru").config["created"]

    result = run_training("all", "--missing", "--profile", "tiny", "--out", str(tmp_path), "--only", "lm-rnn", "lm-gru")
    assert f"lm-rnn: trained by recipe 0000000000000000, today's is {today}" in result.stderr
    assert "lm-gru: trained by today's tiny recipe, skipped" in result.stderr
    assert "trained 1 checkpoint(s) in" in result.stderr
    assert load_checkpoint(tmp_path / "lm-rnn").config["recipe"]["fingerprint"] == today
    assert load_checkpoint(tmp_path / "lm-gru").config["created"] == kept


def labeled(path: Path) -> Path:
    rng = random.Random(0)
    rows = []
    for _ in range(160):
        label = rng.choice(["sea", "land"])
        vocabulary = ["wave", "ship", "salt", "tide"] if label == "sea" else ["hill", "field", "stone", "road"]
        rows.append(f"{label}\t" + " ".join(rng.choice(vocabulary + ["the", "a"]) for _ in range(8)))
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


# Each trainer the other test files do not already resume: its flags, its checkpoint, and when to stop it.
RESUMABLE = {
    "lm": (["lm", "--cell", "gru", "--max-steps", "20", "--max-seconds", "0", "--eval-interval", "5",
            "--dropout", "0.1"], "lm-gru", lambda state: state["step"] == 10),
    # selects its best epoch: the best so far travels in the state
    "classifier": (["classifier", "--arch", "mlp", "--epochs", "4", "--batch-size", "16"], "clf-mlp",
                   lambda state: len(state["history"]["evaluations"]) == 2),
}


@pytest.mark.parametrize("trainer", sorted(RESUMABLE))
def test_resume_after_an_interruption_repeats_the_uninterrupted_run(trainer: str, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch):
    flags, checkpoint_id, stop = RESUMABLE[trainer]
    if trainer == "classifier":
        flags = [*flags, "--labeled", str(labeled(tmp_path / "toy.tsv")), "--force"]

    def run(out: str, *extra: str) -> dict:
        assert main([*flags, "--profile", "tiny", "--device", "cpu", "--precision", "fp32",
                     "--out", str(tmp_path / out), *extra]) == 0
        return json.loads((state_dir(tmp_path / out, checkpoint_id) / "history.json").read_text())

    straight = run("a")
    with interrupted_after_saving(monkeypatch, stop):
        run("b")
    resumed = run("b", "--resume")
    assert resumed["step"] == straight["step"]
    assert resumed["loss"] == pytest.approx(straight["loss"], abs=1e-6)
    assert [e.get("val_loss", e.get("val_macro_f1")) for e in resumed["evaluations"]] == \
        [e.get("val_loss", e.get("val_macro_f1")) for e in straight["evaluations"]]
    a, b = (load_checkpoint(tmp_path / run / checkpoint_id) for run in ("a", "b"))
    for name, weight in a.state_dict.items():
        torch.testing.assert_close(b.state_dict[name], weight, rtol=0, atol=1e-6)


class Scripted:
    """A one-weight model pulled towards 1 by its loss; validation reports the weight and a scripted score."""

    def __init__(self, scores: list[float]):
        self.model = torch.nn.Linear(1, 1, bias=False)
        torch.nn.init.zeros_(self.model.weight)
        self.scores, self.weights = list(scores), []

    def batches(self):
        from training.loop import Batch

        while True:
            yield Batch(None, 1, 1)

    def loss(self, model, batch, rows):
        return (model.weight.sum() - 1.0) ** 2

    def validate(self, model):
        self.weights.append(model.weight.item())
        return {"score": self.scores.pop(0)}


def run_scripted(tmp_path: Path, scores: list[float], selection, average_last: int = 3) -> tuple[Scripted, object]:
    import argparse

    from training.loop import Run, Schedule, Settings, add_arguments, resolve

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = resolve(parser.parse_args(["--precision", "fp32"]), {})
    args.out, args.device, args.seed = tmp_path, "cpu", 0
    task = Scripted(scores)
    with Run(args, "scripted") as run:
        trained = run.fit(task, Settings(8, Schedule(0.1), eval_interval=2, selection=selection,
                                               average_last=average_last), {})
    return task, trained


def test_averaging_the_last_evaluations_gives_the_mean_of_their_weights(tmp_path: Path):
    _, plain = run_scripted(tmp_path / "plain", [1.0, 2.0, 3.0], selection=None, average_last=0)
    final = plain.model.weight.item()
    task, trained = run_scripted(tmp_path / "averaged", [1.0, 2.0, 3.0, 0.0], selection=None)
    # Without a selection the run is evaluated at steps 2, 4 and 6, not where it ends: the average is of
    # the weights at steps 4 and 6 and the final ones, at step 8.
    assert len(task.weights) == 4
    assert task.weights[-1] == pytest.approx((task.weights[1] + task.weights[2] + final) / 3)
    assert trained.model.weight.item() == pytest.approx(task.weights[-1])
    assert trained.history["evaluations"][-1]["averaged"] == 3


@pytest.mark.parametrize(("averaged_score", "kept"), [(9.0, "average"), (1.0, "best")])
def test_the_average_is_kept_only_when_the_selection_prefers_it(tmp_path: Path, averaged_score: float, kept: str):
    from training.loop import Selection

    task, trained = run_scripted(tmp_path, [1.0, 2.0, 5.0, 3.0, averaged_score], selection=Selection("score", True))
    expected = task.weights[-1] if kept == "average" else task.weights[2]
    assert trained.model.weight.item() == pytest.approx(expected)
    assert trained.best["score"] == max(5.0, averaged_score)
