"""The leaderboard: its README block, replaced between its markers or added when they are missing, and the
command itself, run end to end with the tiny profile."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from training.leaderboard import MARKERS, spread, table, write_readme

from .conftest import run_training


def rows() -> tuple[list[dict], list[dict]]:
    test = {"examples": 1725}
    classifiers = [
        {"model": "TF-IDF + logistic regression (baseline)", "test_accuracy": 0.67, "test_macro_f1": 0.66,
         "parameters": 1000, "train_seconds": 3.0, "test": test},
        {"model": "LSTM", "test_accuracy": 0.61, "test_macro_f1": 0.59, "parameters": 2000, "train_seconds": 20.0,
         "test": test},
    ]
    lms = [
        {"model": "GRU LM", "val_bpc": 2.9, "val_bpc_windows": 3.0, "window": 512, "parameters": 10, "steps": 5,
         "tokens_per_second": 100.0, "curve": [(1.0, 4.0), (2.0, 2.9)]},
        {"model": "GPT", "val_bpc": 2.7, "val_bpc_windows": 2.7, "window": 512, "parameters": 20, "steps": 4,
         "tokens_per_second": 90.0, "curve": [(1.0, 3.5), (2.0, 2.7)]},
    ]
    return classifiers, lms


def test_table_lists_every_row_and_sorts_language_models_by_bits_per_character(tmp_path: Path) -> None:
    classifiers, lms = rows()
    args = argparse.Namespace(profile="quick", lm_seconds=60.0, readme=tmp_path / "README.md")
    text = table(classifiers, lms, args, tmp_path / "docs" / "plot.png")
    assert "`python -m training leaderboard`" in text
    assert "| LSTM | 0.610 | 0.590 | 2,000 | 20.0 |" in text
    assert text.index("| GPT |") < text.index("| GRU LM |")
    assert "(docs/plot.png)" in text


def test_a_row_over_seeds_shows_mean_and_standard_deviation(tmp_path: Path) -> None:
    assert spread([0.6, 0.7, 0.8]) == (0.7, 0.1)
    assert spread([0.65]) == (0.65, 0.0)
    classifiers, _ = rows()
    classifiers[1].update(test_accuracy_std=0.012, test_macro_f1_std=0.034,
                          seeds=[{"test_macro_f1": 0.56}, {"test_macro_f1": 0.62}])
    args = argparse.Namespace(profile="quick", lm_seconds=60.0, seeds=2, readme=tmp_path / "README.md",
                              docs=tmp_path / "docs")
    text = table(classifiers, [], args, tmp_path / "docs" / "plot.png")
    assert "| LSTM | 0.610 ± 0.012 | 0.590 ± 0.034 | 2,000 | 20.0 |" in text
    assert "| TF-IDF + logistic regression (baseline) | 0.670 | 0.660 |" in text
    assert "over 2 seeds" in text and "(docs/leaderboard_classifiers.png)" in text
    assert "`python -m training leaderboard --seeds 2`" in text


def test_readme_block_is_replaced_between_markers_and_the_rest_kept(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    start, end = MARKERS
    readme.write_text(f"# Title\n\nintro\n\n{start}\nold table\n{end}\n\n## After\n", encoding="utf-8")
    write_readme(readme, "new table")
    content = readme.read_text(encoding="utf-8")
    assert "old table" not in content and f"{start}\nnew table\n{end}" in content
    assert content.startswith("# Title\n\nintro\n\n") and content.endswith("\n\n## After\n")


def test_readme_without_markers_gets_a_leaderboard_section(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("# Title\n", encoding="utf-8")
    write_readme(readme, "table")
    write_readme(readme, "table again")  # the second run replaces, it does not append again
    content = readme.read_text(encoding="utf-8")
    assert content.count("## Leaderboard") == 1 and "table again" in content and "table\n" not in content


def test_the_command_trains_every_row_and_writes_the_table_and_plot(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("# Title\n", encoding="utf-8")
    run_training("leaderboard", "--profile", "tiny", "--lm-seconds", "3", "--seeds", "2",
                 "--out", str(tmp_path / "checkpoints"), "--readme", str(readme), "--docs", str(tmp_path / "docs"))
    content = readme.read_text(encoding="utf-8")
    start, end = MARKERS
    table_rows = [line for line in content[content.index(start):content.index(end)].splitlines()
                  if line.startswith("| ") and not line.startswith("| Model")]
    names = [row.split(" | ")[0].removeprefix("| ") for row in table_rows]
    networks = [n for arch in ("MLP (bag of embeddings)", "TextCNN", "RNN", "LSTM", "GRU")
                for n in (arch, f"{arch} + word2vec")]
    assert names[:12] == ["TF-IDF + logistic regression (baseline)", *networks, "BERT (fine-tuned)"]
    assert sorted(names[12:]) == ["GPT", "GRU LM", "LSTM LM", "RNN LM"]
    assert all(" ± " in row for row in table_rows[1:12])
    for plot in ("leaderboard_lm.png", "leaderboard_classifiers.png"):
        assert (tmp_path / "docs" / plot).read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    figures = json.loads((tmp_path / "docs" / "leaderboard.json").read_text(encoding="utf-8"))
    assert len(figures["classification"]) == 12 and len(figures["language_models"]) == 4
    for row in figures["classification"][1:]:
        assert [r["seed"] for r in row["seeds"]] == [0, 1]
        assert row["test_macro_f1"] == pytest.approx(sum(r["test_macro_f1"] for r in row["seeds"]) / 2, abs=1e-4)
    runs = tmp_path / "checkpoints" / ".leaderboard"
    word2vec = json.loads((runs / "clf-gru-word2vec-seed1" / "config.json").read_text(encoding="utf-8"))
    assert word2vec["data"]["initialised_from"]["id"] == "word2vec-sg"  # one word2vec for every seed
    assert "initialised_from" not in json.loads((runs / "clf-gru-seed1" / "config.json").read_text(encoding="utf-8"))[
        "data"]
    # Everything it trained stays hidden from the service, which lists only <out>/<id>/ directories.
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == [".leaderboard"]
