"""Code in an answer that no placed source says: flagged, so it is never shown as advice.

A small model invents commands (`rm -rf /var/log/package.log` for "how do I keep logs from
growing", when the sources say logrotate). What can hurt when copied is code: backticked spans,
lines of a fenced block, and bare tokens that only code has (paths, `--options`, `name()`,
`a.b.c`, `file.ext`). Each is looked up in the text of the sources the prompt carried, case and
white space aside; what is found nowhere is `unsupported`. A call (`list()`, `str.split(sep)`)
stands when the sources name what it calls: they write `list` or `list(iterable)`, and the model
writes the parentheses (3 of the 8 flagged answers on pydoc's tune half were only that).
"""

from __future__ import annotations

import re

_FENCE = re.compile(r"```[^\n]*\n(.*?)(?:```|$)", re.S)
_INLINE = re.compile(r"(`+)([^`\n]+?)\1(?!`)")  # `x` or reStructuredText's ``x``
_BARE = re.compile(
    r"(?<![\w/.-])(?:"
    r"(?:~|\.{1,2})?/[\w.@+-]+(?:/[\w.@+-]+)+"  # a path of two parts or more
    r"|--?[A-Za-z][\w-]*"  # an option
    r"|[A-Za-z_][\w]*(?:\.[A-Za-z_]\w*)*\([^()\s]*\)"  # a call
    r"|[A-Za-z_]\w*(?:\.[A-Za-z_]\w*){2,}"  # a dotted name
    r")")
_CALL = re.compile(r"([A-Za-z_][\w.]*)\s*\(.*\)")
MIN_LENGTH = 3  # shorter spans (`-x`, `a`) say too little to judge


def _normal(text: str) -> str:
    return " ".join(text.lower().split())


def code_spans(answer: str) -> list[str]:
    """The answer's code, in order, each once: fenced lines, inline spans, then bare tokens."""
    spans: list[str] = []
    rest = answer
    for block in _FENCE.finditer(answer):
        spans += [line.strip() for line in block.group(1).splitlines() if line.strip()]
    rest = _FENCE.sub(" ", rest)
    spans += [m.group(2).strip() for m in _INLINE.finditer(rest)]
    rest = _INLINE.sub(" ", rest)
    spans += [m.group().rstrip(".,;:") for m in _BARE.finditer(rest)]
    seen: dict[str, None] = {}
    for span in spans:
        if len(span) >= MIN_LENGTH:
            seen.setdefault(span, None)
    return list(seen)


def unsupported(answer: str, sources: list[str]) -> list[str]:
    """The answer's code spans that appear in none of `sources` (the placed passages)."""
    said = _normal("\n".join(sources))
    return [span for span in code_spans(answer)
            if _normal(span) not in said and not _names_a_callee(span, said)]


def _names_a_callee(span: str, said: str) -> bool:
    call = _CALL.fullmatch(span.strip())
    return call is not None and re.search(
        rf"(?<![\w.]){re.escape(call.group(1).lower())}(?!\w)", said) is not None
