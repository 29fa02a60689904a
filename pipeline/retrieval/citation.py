"""How an answer names where a passage came from: `manual.pdf, p. 37–38, § Log files`."""

from __future__ import annotations


def cite(source: str, heading: str = "", page_start: int | None = None,
         page_end: int | None = None) -> str:
    """`source`, its pages if it has any, and its innermost section. `heading` is a chunk's
    path (`manual.pdf › Usage › Log files`); only its last title is shown."""
    parts = [source]
    if page_start is not None:
        last = page_end if page_end is not None else page_start
        parts.append(f"p. {page_start}" if last == page_start else f"p. {page_start}–{last}")
    section = heading.split(" › ")[-1].strip() if heading else ""
    if section and section != source:
        parts.append(f"§ {section}")
    return ", ".join(parts)
