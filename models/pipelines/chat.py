"""Chat with a language model that learnt from plays: the conversation as a scene, the reply as its next speech.

Each message becomes a speech (``models.script``, the rendering training uses): its ``name``, or the
default speaker of its role, then the lines of its content. The prompt ends with the heading of the
reply's speaker: the ``name`` of the conversation's last assistant message, or the assistant's default
speaker. The reply is what the model writes next, up to where the next speech would begin
(``NEXT_SPEECH``, given to the generator as a stop sequence) or its end of text. Generation itself is the
text generator's, unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from models.script import SPEECH_BREAK, lines_of, scene

# Speakers the plays know: the Chorus sets the scene, as a system message does; Hamlet asks, and Horatio,
# his confidant, answers.
DEFAULT_SPEAKERS = {"system": "Chorus", "developer": "Chorus", "user": "HAMLET", "assistant": "HORATIO"}
ROLES = tuple(DEFAULT_SPEAKERS)
NEXT_SPEECH = SPEECH_BREAK  # where the reply ends: the next speaker's line begins after it


@dataclass(frozen=True)
class Message:
    role: str  # one of ROLES
    content: str
    name: str | None = None

    @property
    def speaker(self) -> str:
        return self.name or DEFAULT_SPEAKERS[self.role]


def reply_speaker(messages: Sequence[Message]) -> str:
    """Who speaks the reply: the last assistant message's speaker, or the assistant's default one."""
    return next((m.speaker for m in reversed(messages) if m.role == "assistant"), DEFAULT_SPEAKERS["assistant"])


def render(messages: Sequence[Message], reply: bool = True) -> str:
    """The conversation as a scene; with ``reply``, ending with the heading of the reply's speaker: the
    prompt to continue."""
    speeches = [(m.speaker, lines_of(m.content)) for m in messages]
    return scene([*speeches, (reply_speaker(messages), [])] if reply else speeches)
