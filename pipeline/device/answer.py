"""What the user reads: the answer without special tokens or loops, and the evidence beside it.

- Special tokens (`<|im_end|>`, …) are the model's control text, never answer text.
- A 135M model decoding greedily often loops. `Guard` watches the words as they stream; once the
  last `REPEAT_WORDS` words already occurred in that order, the answer has started over: the
  runner is stopped and the repeat is cut from the answer.
- Evidence: the sentences of the prompt's sources that share the most content words with the
  question, with their document and character offsets. With a small model the quoted evidence
  is often the most useful part of an answer.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from pipeline.device.retrieve import STOPWORDS

REPEAT_WORDS = 6
_WORD = re.compile(r"\S+")
_CONTENT = re.compile(r"[A-Za-z0-9_]+")
_SENTENCE = re.compile(r"[^.!?\n]+(?:[.!?]+|\n|$)")


def content_words(text: str) -> set[str]:
    """Lower-cased words of three or more characters that are not stopwords."""
    return {w for w in (m.lower() for m in _CONTENT.findall(text))
            if len(w) >= 3 and w not in STOPWORDS}


def repeat_start(words: list[str], n: int = REPEAT_WORDS) -> int | None:
    """Where the repeated tail starts (a word index), when the last n words occurred before."""
    if len(words) < 2 * n:
        return None
    tail = words[-n:]
    for start in range(len(words) - n):
        if words[start : start + n] == tail:
            return len(words) - n
    return None


class Guard:
    """Streams pieces on, drops special tokens, and stops the runner when the answer loops."""

    def __init__(self, special: set[str], on_piece: Callable[[str], None],
                 stop: Callable[[], None]) -> None:
        self.special, self.on_piece, self.stop = special, on_piece, stop
        self.pieces: list[str] = []
        self.repeated = False

    def __call__(self, piece: str) -> None:
        if self.repeated or piece in self.special:
            return
        self.pieces.append(piece)
        self.on_piece(piece)
        if repeat_start(_WORD.findall("".join(self.pieces))) is not None:
            self.repeated = True
            self.stop()

    def text(self) -> str:
        text = "".join(self.pieces)
        for token in self.special:
            text = text.replace(token, "")
        if self.repeated:
            words = list(_WORD.finditer(text))
            cut = repeat_start([w.group() for w in words])
            text = text[: words[cut].start()] if cut is not None else text
        return text.strip()


@dataclass(frozen=True)
class Evidence:
    source: str
    start: int
    end: int
    text: str


def evidence(question: str, passages: list[tuple[str, int, str]], most: int = 2
             ) -> list[Evidence]:
    """The `most` sentences of `passages` ((source, start offset, text)) that share the most
    content words with the question; ties go to the earlier source and sentence."""
    wanted = content_words(question)
    scored = []
    for order, (source, offset, text) in enumerate(passages):
        for match in _SENTENCE.finditer(text):
            sentence = match.group().strip()
            overlap = len(wanted & content_words(sentence))
            if overlap and len(sentence) >= 20:
                begin = offset + match.start() + len(match.group()) - len(match.group().lstrip())
                scored.append((-overlap, order, match.start(),
                               Evidence(source, begin, begin + len(sentence), sentence)))
    return [item[-1] for item in sorted(scored, key=lambda s: s[:3])[:most]]
