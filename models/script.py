"""The play script: the text the language models learn from, and how a conversation is put to them.

Training renders every play this way (``training.data.Play.render``), and ``/v1/chat/completions``
renders a conversation the same way, so a chat prompt reads like the plays: each speech is its speaker's
name and a colon on a line of their own, then its lines, and a blank line ends it. A speech never holds
a blank line, so the next speech begins exactly where a blank line does.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

SPEECH_BREAK = "\n\n"  # between two speeches; never inside one


def speech(speaker: str, lines: Sequence[str]) -> str:
    """``SPEAKER:`` on a line of its own, then the speech's lines."""
    return f"{speaker}:\n" + "\n".join(lines)


def scene(speeches: Iterable[tuple[str, Sequence[str]]]) -> str:
    """Speeches, one after another, a blank line between them."""
    return SPEECH_BREAK.join(speech(speaker, lines) for speaker, lines in speeches)


def lines_of(text: str) -> list[str]:
    """A text as a speech's lines: each line trimmed, blank ones dropped (one would end the speech)."""
    return [line.strip() for line in text.splitlines() if line.strip()]
