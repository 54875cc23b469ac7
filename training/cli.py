"""``python -m training <family> [--profile tiny|quick|full] ...`` and its sibling commands.

    python -m training word2vec --mode sg            train one family (writes checkpoints/<id>/)
    python -m training all [--missing] [--extras]    train every default checkpoint (--missing: absent or outdated;
                                                     --extras: the catalog's extra ones too)
    python -m training evaluate word2vec             evaluate a checkpoint, refresh its metrics.json
    python -m training export word2vec --format text  write vectors gensim can load
    python -m training recipes [--write]             fingerprints of the default recipes (models/recipes.json)

Each family is a module in this package with ``add_arguments(parser)``, ``resolve_arguments(args)`` (its
profile applied), ``train(args) -> list[Path]`` and, where it can be evaluated after training,
``add_evaluate_arguments(parser)`` and ``evaluate(args) -> dict``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

from models.catalog import CATALOG, RECIPES_FILE, CatalogEntry, default_recipes, recipe_changed
from models.checkpoint import WEIGHTS_FILE, CheckpointError, read_config
from training.common import PROFILES, configure_threads
from training.recipe import recipe

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
    parser.add_argument("--epochs", type=int, default=None,
                        help="passes over the training data (--max-steps caps them)")
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
                            help="only train checkpoints that are absent, unreadable or trained by another recipe")
    everything.add_argument("--only", nargs="+", default=None, metavar="ID",
                            help="restrict to these checkpoint ids")
    everything.add_argument("--extras", action="store_true",
                            help="also the catalog's extra checkpoints, which make serve does not train")

    recipes = commands.add_parser("recipes", help="fingerprints of the default recipes, per profile")
    recipes.add_argument("--write", action="store_true", help=f"store them in {RECIPES_FILE}, which the service reads")

    for verb, what in (("evaluate", "evaluate a trained checkpoint"),
                       ("export", "export a checkpoint to another format")):
        families = commands.add_parser(verb, help=what).add_subparsers(dest="family", required=True, metavar="FAMILY")
        for family in FAMILIES:
            module = family_module(family)
            if hasattr(module, verb):
                sub = families.add_parser(family)
                sub.add_argument("--out", type=Path, default=Path("checkpoints"), help="checkpoint root directory")
                if verb == "evaluate":
                    sub.add_argument("--device", default="auto")
                getattr(module, f"add_{verb}_arguments")(sub)
    return parser


def run_command(argv: list[str]) -> list[Path]:
    """Train through the CLI's own parser, so flags and profiles are exactly the command's."""
    args = build_parser().parse_args(argv)
    log.info("python -m training %s", " ".join(argv))
    return family_module(args.command).train(args)


def default_arguments(parser: argparse.ArgumentParser, entry: CatalogEntry, profile: str,
                      out: Path) -> argparse.Namespace:
    """The flags that train ``entry`` with ``profile``, the profile applied."""
    args = parser.parse_args([*entry.train_args, "--profile", profile, "--out", str(out)])
    return family_module(entry.family).resolve_arguments(args)


def why_train(root: Path, entry: CatalogEntry, fingerprint: str, retrained: set[str]) -> str | None:
    """Why ``all --missing`` trains ``entry``: absent, unreadable, made by another recipe, or started from a
    checkpoint trained again in this run; None when it is current."""
    try:
        config = read_config(root / entry.id)
    except CheckpointError as e:
        return str(e)
    if not (root / entry.id / WEIGHTS_FILE).is_file():
        return f"no {WEIGHTS_FILE}"
    source = config.get("data", {}).get("initialised_from", {}).get("id")
    if source in retrained:
        return f"{source}, which it starts from, was trained again"
    return recipe_changed(config, fingerprint)


def side_by_side(entry: CatalogEntry) -> bool:
    """Whether ``entry`` trains in a process of its own beside its neighbours of the same kind: a family whose
    trainer keeps to one thread (``ONE_THREAD``, seq2seq) fills one core, so on two cores both translation
    directions train in the time of one (measured, quick profile: 152 s + 152 s one after the other, 156 s
    side by side, with as many steps), unless TORCH_THREADS asks for more threads."""
    return (getattr(family_module(entry.family), "ONE_THREAD", False) and not os.environ.get("TORCH_THREADS")
            and (os.cpu_count() or 1) > 1)


def train_entries(entries: list[CatalogEntry], profile: str, out: Path,
                  parser: argparse.ArgumentParser) -> dict[str, float]:
    """Train ``entries`` in order, each side-by-side run of them as one process per core; their seconds."""
    seconds: dict[str, float] = {}
    index = 0
    while index < len(entries):
        group = [entries[index]]
        while (side_by_side(group[0]) and index + len(group) < len(entries) and len(group) < (os.cpu_count() or 1)
               and entries[index + len(group)].family == group[0].family):
            group.append(entries[index + len(group)])
        index += len(group)
        for entry in group:
            log.info("%s: %s --profile %s", entry.id, entry.train_command, profile)
        started = time.perf_counter()
        if len(group) == 1:
            family_module(group[0].family).train(default_arguments(parser, group[0], profile, out))
            finished = {group[0].id: time.perf_counter()}
        else:
            finished = train_in_processes(group, profile, out, started)
        for entry in group:
            seconds[entry.id] = finished[entry.id] - started
            log.info("%s: trained in %.1f s", entry.id, seconds[entry.id])
    return seconds


def train_in_processes(group: list[CatalogEntry], profile: str, out: Path, started: float) -> dict[str, float]:
    """``python -m training ...`` for each entry at once; when each finished (a failure stops them all)."""
    processes = {entry.id: subprocess.Popen([sys.executable, "-m", "training", *entry.train_args,
                                             "--profile", profile, "--out", str(out)]) for entry in group}
    finished: dict[str, float] = {}
    try:
        while len(finished) < len(processes):
            for entry_id, process in processes.items():
                if entry_id in finished or process.poll() is None:
                    continue
                if process.returncode != 0:
                    raise ValueError(f"{entry_id}: its training exited with status {process.returncode}")
                finished[entry_id] = time.perf_counter()
            time.sleep(0.2)
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()
                process.wait()
    return finished


def train_all(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    entries = [e for e in CATALOG if (e.default or args.extras) and (args.only is None or e.id in args.only)]
    if args.only:
        unknown = set(args.only) - {e.id for e in CATALOG}
        if unknown:
            parser.error(f"unknown checkpoint ids: {', '.join(sorted(unknown))}")
    selected: list[CatalogEntry] = []
    for entry in entries:
        if args.missing:
            sub_args = default_arguments(parser, entry, args.profile, args.out)
            why = why_train(args.out, entry, recipe(sub_args)["fingerprint"], {e.id for e in selected})
            if why is None:
                log.info("%s: trained by today's %s recipe, skipped", entry.id, args.profile)
                continue
            log.info("%s: %s", entry.id, why)
        selected.append(entry)
    started = time.perf_counter()
    seconds = train_entries(selected, args.profile, args.out, parser)
    log.info("trained %d checkpoint(s) in %.1f s%s", len(seconds), time.perf_counter() - started,
             "".join(f"; {k} {v:.1f} s" for k, v in seconds.items()))
    return 0


def default_fingerprints(parser: argparse.ArgumentParser) -> dict[str, dict[str, str]]:
    """profile -> checkpoint id -> fingerprint of the recipe ``python -m training all`` trains it by."""
    return {profile: {e.id: recipe(default_arguments(parser, e, profile, Path("checkpoints")))["fingerprint"]
                      for e in CATALOG if e.default} for profile in PROFILES}


def recipes(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    fingerprints = default_fingerprints(parser)
    print(json.dumps(fingerprints, indent=2))
    if args.write:
        RECIPES_FILE.write_text(json.dumps({"fingerprints": fingerprints}, indent=2) + "\n", encoding="utf-8")
        default_recipes.cache_clear()
        print(f"wrote {RECIPES_FILE}")
    elif fingerprints != default_recipes():
        print(f"{RECIPES_FILE} is out of date: run `python -m training recipes --write`", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    configure_threads()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "all":
            return train_all(args, parser)
        if args.command == "recipes":
            return recipes(args, parser)
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
