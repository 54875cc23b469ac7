"""The recipe a checkpoint is trained by, recorded in its config.json so that it knows when it is outdated.

The recipe is every setting of the training command once its profile is applied, less the ones that
change where or how fast a run trains but not what it learns (``PLACEMENT``; the checkpoint's name, and
``--force`` to write it, are where). Its fingerprint (``models.catalog.fingerprint``) also covers the
checkpoint format version. ``models/recipes.json``
holds the fingerprints of today's default recipes, per profile, for the service to read:
``python -m training recipes --write`` rewrites it after a trainer's defaults change (a test fails until
then). ``python -m training all --missing`` retrains a default checkpoint whose recipe differs from
today's, and ``/ready`` marks it outdated.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from models.catalog import fingerprint

PLACEMENT = frozenset({"out", "name", "force", "device", "resume", "compile", "micro_batch_size", "save_interval",
                       "clock"})


def settings(args: argparse.Namespace) -> dict[str, Any]:
    """The recipe's settings as plain JSON values (paths as text, tuples as lists), sorted by name."""
    values = {k: v for k, v in sorted(vars(args).items()) if k not in PLACEMENT}
    return json.loads(json.dumps(values, default=lambda v: str(v) if isinstance(v, Path) else list(v)))


def recipe(args: argparse.Namespace) -> dict[str, Any]:
    """What config.json records: the settings and their fingerprint."""
    values = settings(args)
    return {"fingerprint": fingerprint(values), "settings": values}
