"""What each choice of the default seq2seq recipe is worth: the quick recipe (the Transformer), the recurrent
one, then the recipe with one choice undone at a time, on the validation split (the test split is left for
the final figures); flags after ``--`` go to every run, ``--arch recurrent`` for the recurrent recipe's.

    python bench/seq2seq_ablation.py [--direction zh-en|en-zh] [--jobs 2] [--clock cpu] [--only NAME ...]
    python bench/seq2seq_ablation.py --only "English as whole words" -- --arch recurrent

Every run is ``python -m training seq2seq`` with the quick profile and the run's flags, for the quick
profile's budget of seconds; ``--jobs`` runs go side by side, one thread each. ``--clock cpu`` counts each
run's own CPU seconds instead of the wall clock, which is what a quiet machine's clock would show when
other work shares the cores. Each run selects its model on the validation split; the table shows that
model's greedy validation BLEU and chrF, and how many steps the budget gave it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

# name -> the flags that undo one choice of the quick recipe, or add one it left out (the first row is the recipe)
RUNS: dict[str, tuple[str, ...]] = {
    "quick recipe": (),
    "the recurrent quick recipe (GRU, additive attention)": ("--arch", "recurrent"),
    "with label smoothing 0.1": ("--label-smoothing", "0.1"),
    "untied output embeddings": ("--no-tie-embeddings",),
    "with HSK glosses": ("--glosses",),
    "with HSK glosses and CC-CEDICT's HSK words": ("--glosses", "--dictionary", "hsk"),
    "English as whole words": ("--english-units", "words"),
    "Chinese as words": ("--chinese-units", "words"),
    "no checkpoint averaging": ("--average-last", "0"),
    "batches not bucketed by length": ("--no-length-buckets",),
    "selected on validation loss": ("--select", "val_loss"),
    "constant learning rate, patience 2 on validation loss": ("--select", "val_loss", "--patience", "2", "--decay",
                                                              "none", "--warmup-steps", "0", "--average-last", "0"),
}


def command(name: str, flags: tuple[str, ...], args: argparse.Namespace) -> list[str]:
    slug = "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")
    return [sys.executable, "-m", "training", "seq2seq", "--direction", args.direction, "--name",
            f"{args.direction}-{slug}", "--out", str(args.out), "--seed", str(args.seed), "--clock", args.clock,
            *flags, *args.extra]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--direction", choices=("zh-en", "en-zh"), default="zh-en")
    parser.add_argument("--jobs", type=int, default=2, help="runs side by side")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", nargs="+", default=None, metavar="NAME", help="these runs only (by name)")
    parser.add_argument("--out", type=Path, default=Path("bench-out/seq2seq-ablation"))
    parser.add_argument("extra", nargs="*", help="flags added to every run (after --)")
    args = parser.parse_args()
    runs = {name: flags for name, flags in RUNS.items() if args.only is None or name in args.only}
    print(f"{len(runs)} runs, {args.jobs} at a time, clock {args.clock}; load average {os.getloadavg()[0]:.2f}",
          flush=True)
    pending = [(name, command(name, flags, args)) for name, flags in runs.items()]
    running: list[tuple[str, list[str], subprocess.Popen]] = []
    env = {**os.environ, "PROGRESS": "0"}
    logs = args.out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    while pending or running:
        while pending and len(running) < args.jobs:
            name, argv = pending.pop(0)
            print("$ " + " ".join(argv[1:]), flush=True)
            log = open(logs / f"{argv[argv.index('--name') + 1]}.log", "w")
            running.append((name, argv, subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)))
        time.sleep(2)
        for item in [r for r in running if r[2].poll() is not None]:
            running.remove(item)
            if item[2].returncode != 0:
                print(f"{item[0]}: failed (see {logs})", flush=True)
    print(f"\nload average now {os.getloadavg()[0]:.2f}\n")
    print("| run | steps | val BLEU | val chrF | BP | ratio |\n|---|---:|---:|---:|---:|---:|")
    for name, argv in ((n, command(n, f, args)) for n, f in runs.items()):
        path = args.out / f"seq2seq-{argv[argv.index('--name') + 1]}" / "metrics.json"
        if not path.is_file():
            print(f"| {name} | failed | | | | |")
            continue
        m = json.loads(path.read_text(encoding="utf-8"))
        v = m["validation"]
        print(f"| {name} | {m['steps']:,} | {v['bleu']:.2f} | {v['chrf']:.2f} | {v['brevity_penalty']:.3f} | "
              f"{v['length_ratio']:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
