"""``python -m training <family> [--profile tiny|quick|full] ...`` and its sibling commands.

    python -m training word2vec --mode sg            train one family (writes checkpoints/<id>/)
    python -m training all [--missing]               train every default checkpoint
    python -m training evaluate word2vec             evaluate a checkpoint, refresh its metrics.json
    python -m training export word2vec --format text  write vectors gensim can load

Each family is a module in this package with ``add_arguments(parser)``, ``train(args) -> list[Path]``
and, where it can be evaluated after training, ``add_evaluate_arguments(parser)`` and
``evaluate(args) -> dict``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
import time
from pathlib import Path
from types import ModuleType

from models.catalog import CATALOG
from models.checkpoint import CheckpointError, read_config
from training.common import PROFILES, configure_threads

# family name -> module implementing it
FAMILIES: dict[str, str] = {
    "word2vec": "training.word2vec",
    "gpt": "training.gpt",
    "bert": "training.bert",
    "seq2seq": "training.seq2seq",
    "classifier": "training.classifier",
    "lm": "training.lm",
    "leaderboard": "training.leaderboard",
}

log = logging.getLogger("training")


def family_module(family: str) -> ModuleType:
    return importlib.import_module(FAMILIES[family])


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--profile", choices=PROFILES, default="quick",
                        help="size preset: tiny (seconds, tests), quick (make serve), full (GPU)")
    parser.add_argument("--epochs", type=int, default=None, help="passes over the training data")
    parser.add_argument("--seed", type=int, default=0, help="random seed (same seed, same result)")
    parser.add_argument("--out", type=Path, default=Path("checkpoints"), help="checkpoint root directory")
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda[:N]")
    parser.add_argument("--corpus", type=Path, default=None,
                        help="your own plain-text file instead of the default corpus")
    parser.add_argument("--val-fraction", type=float, default=0.1,
                        help="with --corpus: the last fraction of the text used for validation")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    for family in FAMILIES:
        module = family_module(family)
        sub = commands.add_parser(family, help=(module.__doc__ or "").strip().splitlines()[0])
        add_common_arguments(sub)
        module.add_arguments(sub)

    everything = commands.add_parser("all", help="train every default checkpoint")
    everything.add_argument("--profile", choices=PROFILES, default="quick")
    everything.add_argument("--out", type=Path, default=Path("checkpoints"))
    everything.add_argument("--missing", action="store_true",
                            help="only train checkpoints that are absent or unreadable")
    everything.add_argument("--only", nargs="+", default=None, metavar="ID",
                            help="restrict to these checkpoint ids")

    evaluate = commands.add_parser("evaluate", help="evaluate a trained checkpoint")
    evaluate_families = evaluate.add_subparsers(dest="family", required=True, metavar="FAMILY")
    for family in FAMILIES:
        module = family_module(family)
        if hasattr(module, "evaluate"):
            sub = evaluate_families.add_parser(family)
            sub.add_argument("--out", type=Path, default=Path("checkpoints"), help="checkpoint root directory")
            sub.add_argument("--device", default="auto")
            module.add_evaluate_arguments(sub)

    export = commands.add_parser("export", help="export a checkpoint to another format")
    export_families = export.add_subparsers(dest="family", required=True, metavar="FAMILY")
    for family in FAMILIES:
        module = family_module(family)
        if hasattr(module, "export"):
            sub = export_families.add_parser(family)
            sub.add_argument("--out", type=Path, default=Path("checkpoints"), help="checkpoint root directory")
            module.add_export_arguments(sub)
    return parser


def is_trained(root: Path, checkpoint_id: str) -> bool:
    try:
        read_config(root / checkpoint_id)
    except CheckpointError:
        return False
    return (root / checkpoint_id / "model.safetensors").is_file()


def train_all(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    entries = [e for e in CATALOG if e.default and (args.only is None or e.id in args.only)]
    if args.only:
        unknown = set(args.only) - {e.id for e in CATALOG}
        if unknown:
            parser.error(f"unknown checkpoint ids: {', '.join(sorted(unknown))}")
    for entry in entries:
        if args.missing and is_trained(args.out, entry.id):
            log.info("%s: already trained, skipped", entry.id)
            continue
        log.info("%s: %s --profile %s", entry.id, entry.train_command, args.profile)
        sub_args = parser.parse_args([*entry.train_args, "--profile", args.profile, "--out", str(args.out)])
        started = time.perf_counter()
        family_module(entry.family).train(sub_args)
        log.info("%s: trained in %.1f s", entry.id, time.perf_counter() - started)
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    configure_threads()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "all":
            return train_all(args, parser)
        if args.command == "evaluate":
            metrics = family_module(args.family).evaluate(args)
            print(json.dumps(metrics, indent=2, ensure_ascii=False))
            return 0
        if args.command == "export":
            family_module(args.family).export(args)
            return 0
        paths = family_module(args.command).train(args)
        for path in paths:
            print(f"wrote {path}")
        return 0
    except (FileNotFoundError, ValueError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
