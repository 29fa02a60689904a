"""A document's structure: its paragraphs, each with the headings above it and its character span.

Read from the text itself, by the file's kind:
- Markdown: ATX headings (`## Title`) and setext underlines (`===` level 1, `---` level 2),
  never inside a ``` or ~~~ fence; a fenced block is one paragraph, blank lines and all.
- reStructuredText: a title line underlined, or over- and underlined, by one punctuation
  character repeated at least as long as the title; levels go by the order in which each
  adornment style first appears, as docutils assigns them. Python's pydoc topics are written so.
- HTML is read after `webpage.html_to_text`, which writes its `<h1>`–`<h6>` as Markdown headings;
  PDF and Word files likewise (their outline and heading styles, `pdf.py`, `word.py`), their body
  lines passed through `literal` so that none is taken for a heading.
- Anything else is paragraphs (runs of non-blank lines) under no heading.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePosixPath

_ATX = re.compile(r" {0,3}(#{1,6})[ \t]+(.*?)(?:[ \t]+#+)?[ \t]*$")
_SETEXT = re.compile(r" {0,3}(=+|-+)[ \t]*$")
_FENCE = re.compile(r" {0,3}(```|~~~)")
_ADORNMENT = re.compile(r"([!-/:-@\[-`{-~])\1{2,}[ \t]*$")


@dataclass(frozen=True)
class Block:
    """A paragraph: the titles of the sections it is in, outermost first, and its span."""

    path: tuple[str, ...]
    start: int
    end: int


def style_of(source: str) -> str:
    suffix = PurePosixPath(source).suffix.lower()
    if source.startswith("pydoc:") or suffix == ".rst":
        return "rst"
    if suffix in (".md", ".markdown", ".html", ".htm", ".pdf", ".docx"):
        return "markdown"
    return "plain"


def literal(line: str) -> str:
    """`line` indented past Markdown's 3 spaces if it would read as a heading, an underline or
    a fence, so text converted to Markdown keeps only the structure the converter wrote."""
    return f"    {line}" if _ATX.match(line) or _SETEXT.match(line) or _FENCE.match(line) else line


def blocks(text: str, style: str) -> list[Block]:
    lines = text.splitlines(keepends=True)
    starts = [0]
    for line in lines:
        starts.append(starts[-1] + len(line))
    finder = {"rst": _rst_headings, "markdown": _markdown_headings}.get(style, _no_headings)
    found, fenced = finder([line.rstrip("\r\n") for line in lines])
    path: list[str] = []
    out: list[Block] = []
    first = None  # the first line of the paragraph being read
    for i in range(len(lines) + 1):
        text_line = i < len(lines) and i not in found and (bool(lines[i].strip()) or i in fenced)
        if not text_line and first is not None:
            end = starts[i]
            while end > starts[first] and text[end - 1].isspace():
                end -= 1
            out.append(Block(tuple(t for t in path if t), starts[first], end))
            first = None
        if found.get(i):
            level, title = found[i]
            del path[level - 1:]
            path.extend([""] * (level - 1 - len(path)))  # a skipped level keeps its place
            path.append(title)
        elif text_line and first is None:
            first = i
    return out


def _no_headings(lines: list[str]) -> tuple[dict, set[int]]:
    return {}, set()


def _markdown_headings(lines: list[str]) -> tuple[dict, set[int]]:
    """{line: (level, title), or None for a heading's underline} and the lines in fences."""
    found: dict[int, tuple[int, str] | None] = {}
    fenced: set[int] = set()
    fence = None
    for i, line in enumerate(lines):
        opener = _FENCE.match(line)
        if fence is not None:
            fenced.add(i)
            if opener and opener.group(1) == fence:
                fence = None
            continue
        if i in found:
            continue
        if opener:
            fence = opener.group(1)
            fenced.add(i)
            continue
        atx = _ATX.match(line)
        if atx:
            found[i] = (len(atx.group(1)), atx.group(2).strip())
            continue
        under = _SETEXT.match(lines[i + 1]) if i + 1 < len(lines) else None
        if under and line.strip() and not line.startswith("    ") and i not in found:
            found[i] = (1 if under.group(1)[0] == "=" else 2, line.strip())
            found[i + 1] = None
    return found, fenced


def _rst_headings(lines: list[str]) -> tuple[dict, set[int]]:
    found: dict[int, tuple[int, str] | None] = {}
    styles: list[tuple[str, bool]] = []
    taken: set[int] = set()
    for i, line in enumerate(lines):
        title = line.strip()
        if i in taken or not title or line[0].isspace() or _ADORNMENT.match(line):
            continue
        under = lines[i + 1] if i + 1 < len(lines) else ""
        if not _ADORNMENT.match(under) or len(under.rstrip()) < len(title):
            continue
        over = i > 0 and lines[i - 1].rstrip() == under.rstrip() and (i - 1) not in taken
        style = (under[0], bool(over))
        if style not in styles:
            styles.append(style)
        found[i] = (styles.index(style) + 1, title)
        taken.update({i, i + 1} | ({i - 1} if over else set()))
    for i in taken - set(found):
        found[i] = None  # over- and underlines: part of the heading, not text
    return found, set()
