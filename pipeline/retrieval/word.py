"""A Word (.docx) file as Markdown-shaped text: heading styles (`Title`, `Heading 1`…`9`) become
`#` headings, so `corpus.chunking: sections` cuts it as it cuts Markdown; tables are read row by
row, cells joined by ` | `, in their place among the paragraphs."""

from __future__ import annotations

import re

from pipeline.retrieval.sections import literal

_HEADING = re.compile(r"(?:Heading|heading) ([1-9])$")


class Unreadable(Exception):
    """The file is not a Word document python-docx can open; its message is the skip reason."""


def _level(style_name: str) -> int:
    if style_name == "Title":
        return 1
    found = _HEADING.match(style_name)
    return min(int(found.group(1)), 6) if found else 0


def read_docx(path: str) -> str:
    import docx
    from docx.table import Table

    try:
        document = docx.Document(path)
    except Exception as error:  # not a zip, a zip without Word's parts, bad XML: one reason
        raise Unreadable("malformed-docx") from error
    lines = []
    for block in document.iter_inner_content():
        if isinstance(block, Table):
            for row in block.rows:
                cells = [" ".join(cell.text.split()) for cell in row.cells]
                lines += [literal(" | ".join(cells)), ""]
            continue
        text = " ".join(block.text.split())
        if not text:
            continue
        level = _level(block.style.name if block.style is not None else "")
        lines += [f"{'#' * level} {text}" if level else literal(text), ""]
    return "\n".join(lines).strip()
