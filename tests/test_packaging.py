"""How the service is installed and started: the extras, the command line (`python -m app`, `lineage`,
`uvicorn app.main:app`), and flags given to the Docker entrypoint."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import httpx

from .conftest import ROOT, Service

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())

# Started instead of `python -m app`: the service with every module of the named distributions missing, as
# in an install without the train extra.
WITHOUT = """
import importlib.abc, sys
missing = set(sys.argv[1].split(","))
class Missing(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in missing:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, Missing())
from app.cli import serve
serve(sys.argv[2:])
"""


def distribution(requirement: str) -> str:
    return re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9._-]+", requirement).group()).lower()


def modules_of(distributions: set[str]) -> set[str]:
    return {module for module, owners in packages_distributions().items()
            if any(distribution(owner) in distributions for owner in owners)}


def test_the_service_serves_every_family_without_the_train_extra(checkpoint_dir: Path, tmp_path: Path):
    train_only = {distribution(r) for r in PYPROJECT["project"]["optional-dependencies"]["train"]}
    train_only -= {distribution(r) for r in PYPROJECT["project"]["dependencies"]}
    missing = modules_of(train_only) | {"training"}
    assert {"gensim", "sklearn", "numba", "sacrebleu"} <= missing
    server = Service(checkpoint_dir, tmp_path / "server.log",
                    command=[sys.executable, "-c", WITHOUT, ",".join(sorted(missing))])
    try:
        with httpx.Client(base_url=server.url, timeout=60) as c:
            ready = c.get("/ready").json()
            assert all(state["status"] == "loaded" for state in ready["checkpoints"]), ready
            calls = [("/v1/word2vec/similarity", {"word_a": "king", "word_b": "queen"}),
                     ("/v1/translate", {"text": "他是我的老师。"}),
                     ("/v1/translate/attention.png", {"text": "他是我的老师。"}),
                     ("/v1/fill-mask", {"text": "to be or not to [MASK]"}),
                     ("/v1/classify", {"text": "My liege, the French are come.", "model": "cnn"}),
                     ("/v1/generate", {"prompt": "ROMEO:", "max_new_tokens": 8, "model": "lstm"})]
            for path, body in calls:
                assert c.post(path, json=body).status_code == 200, path
    finally:
        server.stop()
    assert "No module named" not in server.log.read_text()


def test_flags_given_to_the_docker_entrypoint_reach_the_server_over_the_environment(tmp_path: Path):
    server = Service(tmp_path, tmp_path / "server.log", PYTHON=sys.executable, API_KEY="from-environment",
                    command=["sh", str(ROOT / "docker" / "entrypoint.sh"), "--api-key", "from-flag"])
    try:
        with httpx.Client(base_url=server.url, timeout=30) as c:
            assert c.get("/v1/models", headers={"Authorization": "Bearer from-flag"}).status_code == 200
            assert c.get("/v1/models", headers={"Authorization": "Bearer from-environment"}).status_code == 401
    finally:
        server.stop()


def test_an_unknown_flag_or_a_bad_value_is_refused_with_a_message():
    unknown = subprocess.run([sys.executable, "-m", "app", "--workers", "2"], cwd=ROOT, capture_output=True,
                             text=True, timeout=60)
    assert unknown.returncode == 2 and "unrecognized arguments: --workers 2" in unknown.stderr
    bad = subprocess.run([sys.executable, "-m", "app", "--read-timeout", "soon"], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode == 2
    assert "--read-timeout (or READ_TIMEOUT): Input should be a valid number" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_uvicorn_serves_app_main_app_with_the_environments_settings(tmp_path: Path):
    lazy = subprocess.run([sys.executable, "-c", "import app.main as m; print('app' in vars(m))"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert lazy.stdout.strip() == "False", "importing app.main built the app"
    server = Service(tmp_path, tmp_path / "server.log", API_KEY="from-environment",
                    command=["sh", "-c", f'exec "{sys.executable}" -m uvicorn app.main:app --port "$PORT"'])
    try:
        with httpx.Client(base_url=server.url, timeout=30) as c:
            assert c.get("/v1/models").status_code == 401
            assert c.get("/v1/models", headers={"Authorization": "Bearer from-environment"}).status_code == 200
    finally:
        server.stop()


def test_the_lineage_script_serves_and_trains():
    assert PYPROJECT["project"]["scripts"]["lineage"] == "app.cli:main"
    lineage = [sys.executable, "-c", "from app.cli import main; main()"]
    serve = subprocess.run([*lineage, "serve", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert serve.returncode == 0 and serve.stdout.startswith("usage: lineage serve")
    assert "--read-timeout" in serve.stdout and "--max-connections" in serve.stdout
    train = subprocess.run([*lineage, "train", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert train.returncode == 0 and train.stdout.startswith("usage: python -m training")
