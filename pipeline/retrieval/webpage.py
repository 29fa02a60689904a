"""An HTML page's visible text, its `<h1>`–`<h6>` written as Markdown headings so that
`corpus.chunking: sections` sees its structure, and only those: a heading's text is one line
however the page wraps it, and a body line that would read as Markdown structure (a `--`
under a line, a `# ` at its start) is kept literal (`sections.literal`)."""

from __future__ import annotations

from html.parser import HTMLParser

from pipeline.retrieval.sections import literal

_HEADING = "\x01"  # marks the lines this parser wrote as headings, until html_to_text reads them


class _HtmlText(HTMLParser):
    """Visible text of an HTML page: script and style bodies dropped, blocks on their own lines."""

    _HIDDEN = ("script", "style")
    _BLOCKS = frozenset("address article aside blockquote br dd div dl dt figcaption footer form "
                        "h1 h2 h3 h4 h5 h6 header hr li main nav ol p pre section table td th "
                        "title tr ul".split())
    _HEADINGS = frozenset("h1 h2 h3 h4 h5 h6".split())

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._hidden = 0
        self._heading = 0

    def handle_starttag(self, tag: str, attrs: list) -> None:
        self._hidden += tag in self._HIDDEN
        if tag in self._BLOCKS:
            self.parts.append("\n")
        if tag in self._HEADINGS:  # as Markdown, so sections chunking sees the structure
            self._heading += 1
            self.parts.append(_HEADING + "#" * int(tag[1]) + " ")

    def handle_endtag(self, tag: str) -> None:
        if tag in self._HIDDEN and self._hidden:
            self._hidden -= 1
        if tag in self._HEADINGS and self._heading:
            self._heading -= 1
        if tag in self._BLOCKS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self._hidden:
            self.parts.append(" ".join(data.split()) + " " if self._heading else data)


def html_to_text(html: str) -> str:
    parser = _HtmlText()
    parser.feed(html)
    parser.close()
    out = []
    for raw in "".join(parser.parts).splitlines():
        heading = raw.lstrip().startswith(_HEADING)
        line = " ".join(raw.replace(_HEADING, " ").split())
        if heading and line.strip("#"):
            out.append(line)
        elif line and not heading:
            out.append(literal(line))
    return "\n".join(out)
