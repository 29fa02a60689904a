"""Sentences of a passage, with their offsets, for evidence quotes.

A sentence ends at `.`, `!` or `?` followed by white space, or at a blank line. So a full stop
inside a word never ends one: file names (`CMakeLists.txt`), versions (`3.11.2`), dotted names
(`os.path.join`) stay whole, and so does anything between backticks. Abbreviations (`e.g.`,
`i.e.`, `etc.`, `vs.`, `Fig.`, a single capital's initial) do not end a sentence either. Lines
of one paragraph are one text: the manuals wrap their lines at 70-odd columns.
"""

from __future__ import annotations

import re

ABBREVIATIONS = frozenset({"e.g", "i.e", "etc", "vs", "cf", "fig", "no", "dr", "mr", "mrs",
                           "ms", "st", "approx", "incl", "resp", "sec", "ch", "vol", "p", "pp"})
_END = re.compile(r"[.!?]+[\"')\]]*(?=\s)|\n[ \t]*\n")
_CODE = re.compile(r"`[^`\n]*`")
_LAST_WORD = re.compile(r"([A-Za-z][A-Za-z.]*)\.$")


def _in_code(text: str) -> list[tuple[int, int]]:
    return [m.span() for m in _CODE.finditer(text)]


def _is_abbreviation(text: str, end: int) -> bool:
    """Whether the full stop ending at `end` closes an abbreviation rather than a sentence."""
    match = _LAST_WORD.search(text[max(0, end - 12):end])
    if not match:
        return False
    word = match.group(1)
    return word.lower() in ABBREVIATIONS or (len(word) == 1 and word.isupper())


def boundaries(text: str) -> list[int]:
    """Where the sentences of `text` end: after a sentence's last mark, or after a blank line.
    Text past the last one has not ended (yet)."""
    code = _in_code(text)
    ends = []
    for match in _END.finditer(text):
        if any(a < match.start() < b for a, b in code):
            continue
        if match.group().startswith(".") and _is_abbreviation(text, match.start() + 1):
            continue
        ends.append(match.end())
    return ends


def split(text: str) -> list[tuple[int, int]]:
    """(start, end) character spans of the sentences of `text`, white space trimmed."""
    spans, start = [], 0
    for end in boundaries(text):
        spans.append((start, end))
        start = end
    spans.append((start, len(text)))
    trimmed = []
    for begin, end in spans:
        piece = text[begin:end]
        left = len(piece) - len(piece.lstrip())
        right = len(piece.rstrip())
        if right > left:
            trimmed.append((begin + left, begin + right))
    return trimmed


def sentences(text: str) -> list[tuple[int, int, str]]:
    """(start, end, sentence) with each sentence on one line (wrapped lines joined)."""
    return [(begin, end, " ".join(text[begin:end].split())) for begin, end in split(text)]
