"""The Transformer translator's recipe, measured: each configuration trained on the same split, scored on the
validation split (where choices are made) and the test split, greedy and beam 4.

    python bench/transformer_recipe.py --direction zh-en --max-seconds 150 --clock cpu
    python bench/transformer_recipe.py --max-steps 1500 --rounds 2 \\
        --config base= --config no-smoothing="--label-smoothing 0" --config wide="--dim 192 --ffn-dim 768"

Every configuration is ``python -m training seq2seq --arch transformer`` (quick profile) plus its flags;
``--rounds`` repeats the whole list, configurations taking turns, so that a change of the machine's load
falls on all of them alike. The table gives each run's steps, its training seconds, the CPU seconds of the
whole command (data, training, scoring the test split once: what a quiet machine's clock would show) and
the load average at its end.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import tempfile
import time
from pathlib import Path

# As `python -m training` does: idle OpenMP threads sleep rather than spin (set before torch loads).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("PROGRESS", "0")

import torch  # noqa: E402

from models.checkpoint import load_checkpoint  # noqa: E402
from models.pipelines.translation import TranslationOptions, load  # noqa: E402
from training.cli import run_command  # noqa: E402
from training.seq2seq import load_pairs, score, split_pairs  # noqa: E402


def measure(args: argparse.Namespace, name: str, flags: list[str], out: Path, round_: int) -> dict:
    budget = ["--max-seconds", str(args.max_seconds or 0), "--clock", args.clock]  # 0: none, for equal steps
    steps = ["--max-steps", str(args.max_steps)] if args.max_steps else []
    checkpoint_name = f"{args.direction}-{name}-{round_}"
    cpu = time.process_time()
    (path,) = run_command(["seq2seq", "--arch", "transformer", "--direction", args.direction, "--seed",
                           str(args.seed + round_), *budget, *steps, *flags, "--out", str(out),
                           "--name", checkpoint_name])
    cpu = time.process_time() - cpu  # the whole command: its data, training, and scoring the test split once
    checkpoint = load_checkpoint(path)
    translator = load(checkpoint, torch.device("cpu"))
    pairs, provenance = load_pairs(None)
    split = split_pairs(pairs, args.direction, checkpoint.config["split_seed"],
                        checkpoint.config["data"]["split"]["fraction_test"], provenance)
    row = {"config": name, "flags": " ".join(flags), "round": round_, "steps": checkpoint.config["training"]["steps"],
           "seconds": checkpoint.config["training"]["seconds"], "cpu_seconds": round(cpu, 1),
           "parameters": checkpoint.metrics["parameters"], "val_loss": checkpoint.metrics["validation_loss"],
           "load": os.getloadavg()[0]}
    for label, pairs_ in (("val", split.validation), ("test", split.test)):
        if label not in args.splits:
            continue
        for beam in (1, 4):
            result = score(translator, pairs_, TranslationOptions(beam_size=beam))
            key = f"{label}_{'greedy' if beam == 1 else 'beam4'}"
            row[key] = {"bleu": result["bleu"], "chrf": result["chrf"]}
    return row


def pair(row: dict, key: str, metric: str, digits: int) -> str:
    """greedy / beam 4 of one split's metric, "-" for a split left out."""
    if f"{key}_greedy" not in row:
        return "-"
    return f"{row[f'{key}_greedy'][metric]:.{digits}f} / {row[f'{key}_beam4'][metric]:.{digits}f}"


def markdown(rows: list[dict]) -> str:
    head = ("config", "round", "steps", "s", "CPU s", "load", "params", "val loss", "val BLEU greedy / beam 4",
            "val chrF greedy / beam 4", "test BLEU greedy / beam 4", "test chrF greedy / beam 4")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append(
            f"| {r['config']} | {r['round']} | {r['steps']} | {r['seconds']:.0f} | {r['cpu_seconds']:.0f} | "
            f"{r['load']:.1f} | "
            f"{r['parameters'] / 1e6:.2f}M | {r['val_loss']:.3f} | "
            f"{pair(r, 'val', 'bleu', 2)} | {pair(r, 'val', 'chrf', 2)} | {pair(r, 'test', 'bleu', 2)} | "
            f"{pair(r, 'test', 'chrf', 2)} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--direction", choices=("zh-en", "en-zh"), default="zh-en")
    parser.add_argument("--config", action="append", default=None, metavar="NAME=FLAGS",
                        help="a configuration: its name and the flags it adds (default: the quick profile alone)")
    parser.add_argument("--max-seconds", type=float, default=None,
                        help="each run's wall-clock budget (default: none, the profile's own left out)")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="cpu",
                        help="what --max-seconds counts (cpu: each run's own CPU seconds, fair under others' load)")
    parser.add_argument("--max-steps", type=int, default=None, help="each run's steps (equal work, any load)")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--splits", nargs="+", choices=("val", "test"), default=["val", "test"],
                        help="the splits scored (choose on val alone; score test once, for the recipe chosen)")
    parser.add_argument("--seed", type=int, default=0, help="round r trains with seed + r")
    parser.add_argument("--report", type=Path, default=None, help="also write the rows as JSON here")
    parser.add_argument("--out", type=Path, default=None,
                        help="keep the checkpoints here, to score them again (default: a temporary folder)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(int(os.environ.get("TORCH_THREADS", "1")))  # as the trainer: one thread unless asked
    configs = [c.split("=", 1) for c in (args.config or ["quick="])]
    rows = []
    with tempfile.TemporaryDirectory(prefix="transformer-recipe-") as temporary:
        out = str(args.out or temporary)
        for round_ in range(args.rounds):
            for name, flags in configs:
                rows.append(measure(args, name, shlex.split(flags), Path(out), round_))
                print(markdown(rows[-1:]).splitlines()[-1], flush=True)
                if args.report is not None:  # after each run, so a stopped bench keeps what it measured
                    args.report.write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
