"""What a question expects, and whether a retrieved chunk is it.

An `expect` item is a document (`"bzip2/manual.pdf"`), or an object narrowing it: a `section`
(a heading of the chunk's heading path), a page range `pages: [first, last]` (the chunk's pages
overlap it), a character span `start`/`end` (the chunk's span of the document overlaps it).
A chunk is the item when it is in the document and meets every narrowing given; a section is
not judged on a chunk with no heading below its file name (a PDF without an outline is chunked
by paragraphs), where its pages, if given, still are. A question may list items for documents
the corpus does not hold (the HTML and the PDF edition of one manual): only the ones it holds
count, and a question none of whose items it holds is refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pipeline.retrieval.corpus import Chunk

HEADING_SEPARATOR = " › "


@dataclass(frozen=True)
class Expected:
    source: str
    section: str | None = None
    pages: tuple[int, int] | None = None
    span: tuple[int, int] | None = None

    def describe(self) -> str:
        narrowing = [f"§ {self.section}"] if self.section else []
        if self.pages:
            narrowing.append(f"p. {self.pages[0]}–{self.pages[1]}")
        if self.span:
            narrowing.append(f"characters {self.span[0]}–{self.span[1]}")
        return ", ".join([self.source, *narrowing])

    def holds(self, chunk: Chunk) -> bool:
        if chunk.source != self.source:
            return False
        sections = [part.strip().casefold() for part in chunk.heading.split(HEADING_SEPARATOR)][1:]
        if self.section and sections and self.section.casefold() not in sections:
            return False
        if self.pages and (chunk.page_start is None or chunk.page_end is None
                           or chunk.page_end < self.pages[0] or chunk.page_start > self.pages[1]):
            return False
        return not self.span or (chunk.start < self.span[1] and chunk.end > self.span[0])


def _pair(value: Any) -> tuple[int, int] | None:
    if value is None:
        return None
    if (isinstance(value, list) and len(value) == 2 and all(isinstance(v, int) for v in value)
            and value[0] <= value[1]):
        return (value[0], value[1])
    raise ValueError("a range is two whole numbers, first ≤ last")


def parse(expect: Any) -> list[Expected]:
    """The `expect` field as items; ValueError (with the reason) when it is malformed."""
    items = expect if isinstance(expect, list) else [expect]
    parsed = []
    for item in items:
        if isinstance(item, str) and item:
            parsed.append(Expected(item))
        elif isinstance(item, dict) and isinstance(item.get("source"), str):
            span = None
            if "start" in item or "end" in item:
                span = _pair([item.get("start"), item.get("end")])
            parsed.append(Expected(item["source"], item.get("section") or None,
                                   _pair(item.get("pages")), span))
        else:
            raise ValueError("each expected item is a document name or an object with `source`")
    return parsed


def labels(chunks: list[Chunk], wanted: list[Expected]) -> list[str]:
    """Each ranked chunk as the expected item it is (`expect:<n>`) or as its document, so
    the by-document scores of `rag.retrieval_scores` count a narrowed item like a document."""
    out = []
    for chunk in chunks:
        hit = next((n for n, item in enumerate(wanted) if item.holds(chunk)), None)
        out.append(f"expect:{hit}" if hit is not None else chunk.source)
    return out


def wanted_labels(wanted: list[Expected]) -> list[str]:
    """The labels `labels` gives the expected items."""
    return [f"expect:{n}" for n in range(len(wanted))]
