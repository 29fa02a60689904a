"""The documents' own example in place of one the model invented.

A small model asked "how do I …" writes a command block; most are invented (`unsupported`) and
left out, which leaves "you can use the following command:" and nothing under it. The sources
usually hold the right command a few lines away (a command reference is mostly examples), so
the block left out is replaced by the sources' code block nearest the question by the
embedder: what introduces it (the paragraph before, "The following `cp` command copies all
files under a directory…") and the block itself, read together. It is quoted verbatim and
cited, so a user can tell it from the model's words; it is never the model's.

A code block is a fenced block, or a run of lines indented four spaces or more (reStructuredText
and Markdown literal blocks, pydoc's examples) after a paragraph. A block introduced by one word
("Output::", "Result:") shows what a command printed, not what to run, and one with nothing
before it in the chunk (cut from its introduction) cannot be told apart: neither is an example.
Nor is an indented paragraph of prose (pydoc indents a method's description under its
signature): mostly plain words, a sentence that ends, and no line a prompt or a comment opens.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

MOST_LINES = 12  # an example longer than this is cut (with "…"): a quote, not a listing
_FENCE = re.compile(r"^[ \t]*```[^\n]*\n(.*?)^[ \t]*```[ \t]*$", re.S | re.M)
_INDENTED = re.compile(r"^(?:\t| {4,}).*$")
_WORD = re.compile(r"\w+")
_PLAIN = re.compile(r"[A-Za-z][a-z]*[,.;:!?]?")
_SENTENCE_END = re.compile(r"[A-Za-z]{2}[.!?][\"')]*(?:\s|$)")
_PROMPT = re.compile(r"^\s*(?:\$|>>>|#|%|\.\.\.)(?:\s|$)", re.M)  # a shell's, Python's, a comment
PROSE_SHARE = 0.6  # of a block's words plain (letters, then at most a comma or a stop)


@dataclass(frozen=True)
class Example:
    code: str
    citation: str
    nearness: float = 0.0


def code_blocks(text: str) -> list[tuple[str, str]]:
    """(introduction, code) of each code block in `text`, in order."""
    blocks: list[tuple[str, str]] = []
    for fence in _FENCE.finditer(text):
        blocks.append((_paragraph_before(text, fence.start()), _dedent(fence.group(1))))
    text = _FENCE.sub(lambda m: "\n" * m.group().count("\n"), text)
    lines = text.splitlines()
    text = "\n".join(lines)
    number = 0
    while number < len(lines):
        if _INDENTED.match(lines[number]) and lines[number].strip() \
                and (number == 0 or not lines[number - 1].strip()):
            end = number
            while end < len(lines) and (_INDENTED.match(lines[end]) or not lines[end].strip()):
                end += 1
            code = _dedent("\n".join(lines[number:end]))
            intro = _paragraph_before(text, len("\n".join(lines[:number])))
            if code.strip():
                blocks.append((intro, code))
            number = end
        else:
            number += 1
    return [(intro, code) for intro, code in blocks
            if len(_WORD.findall(intro)) > 1 and not _prose(code)]


def _prose(block: str) -> bool:
    words = block.split()
    plain = sum(bool(_PLAIN.fullmatch(word)) for word in words)
    return (plain > PROSE_SHARE * len(words) and _SENTENCE_END.search(block) is not None
            and _PROMPT.search(block) is None)


def nearest(question_vector: np.ndarray, passages: list[tuple[str, str]],
            embed: Callable[[list[str]], np.ndarray]) -> Example | None:
    """The code block of `passages` ((text, citation)) nearest the question, introduction and
    code read together; ties go to the earlier passage and block. None when they hold none."""
    first: dict[str, tuple[str, str, str]] = {}  # overlapping chunks hold a block twice
    for text, citation in passages:
        for intro, code in code_blocks(text):
            first.setdefault(code, (intro, code, citation))
    found = list(first.values())
    if not found:
        return None
    vectors = embed([f"{intro}\n{code}".strip() for intro, code, _ in found])
    nearness = vectors @ question_vector
    best = int(np.argmax(np.round(nearness, 4)))
    _, code, citation = found[best]
    return Example(_cut(code), citation, round(float(nearness[best]), 4))


def shown(example: Example) -> str:
    """The example as the answer shows it: a fenced block, then where it is from."""
    return f"```\n{example.code}\n```\n(An example from your documents: {example.citation}.)"


def _paragraph_before(text: str, position: int) -> str:
    before = text[:position].rstrip()
    start = before.rfind("\n\n")
    return " ".join(before[start + 2 if start >= 0 else 0:].split())


def _dedent(code: str) -> str:
    return textwrap.dedent(code).strip("\n").rstrip()


def _cut(code: str) -> str:
    lines = code.splitlines()
    return code if len(lines) <= MOST_LINES else "\n".join([*lines[:MOST_LINES], "…"])
