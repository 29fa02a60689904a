"""A PDF's text layer as a document: Markdown headings from its outline, and where each page starts.

pypdfium2 (PDFium) was chosen by measurement on Debian's manuals (bench/pdf_extract.py): 10-20×
the pages/s of pypdf and pdfminer.six at the same word fidelity against the HTML edition. The
text is cleaned the way a reader expects: PDFium's line-break hyphen (U+0002) and soft hyphens
removed, a word hyphenated at a line end joined, ligatures (ﬁ) spelled out, lines repeated at the
top or bottom of several pages (running headers, footers, page numbers) dropped, two columns read
one after the other (PDFium joins lines that share a baseline across the gutter). The outline's
bookmarks become `#` headings at the line that carries their title (or the top of their page),
so `corpus.chunking: sections` cuts a PDF as it cuts Markdown; without an outline, paragraphs.
Pages with images and no text (scans) are returned by number, never indexed as empty.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

from pipeline.retrieval.sections import literal

LIGATURES = {"\ufb00": "ff", "\ufb01": "fi", "\ufb02": "fl", "\ufb03": "ffi", "\ufb04": "ffl",
             "\ufb05": "st", "\ufb06": "st"}  # NFKC of U+FB00-FB06, and nothing else of NFKC
_DROPPED = str.maketrans({**LIGATURES, "\x02": "", "\u00ad": "", "\ufffe": ""})
EDGE_LINES = 2  # lines at each end of a page where running headers and footers are looked for
MAX_CROSSING = 0.1  # share of a page's text runs that may cross a column gutter (titles)
REPEATS = 3  # pages an edge line (digits aside) must appear on to count as running
_HYPHENATED = re.compile(r"(?<=[^\W\d_])-\n(?=[a-z])")
_PARAGRAPH_END = re.compile(r"[.:!?)\]]$")


class Unreadable(Exception):
    """The PDF cannot be read; its message is the skip reason."""


@dataclass
class PdfText:
    text: str
    page_starts: list[int]  # character offset in `text` where page i+1 starts
    no_text_pages: list[int] = field(default_factory=list)  # 1-based, pages with images only


def _gutter(rects: list[tuple[float, float, float, float]], width: float) -> float | None:
    """The x of the gap between two columns of text, or None for one column: the x in the
    middle 40% of the page that the fewest text runs cross (at most `MAX_CROSSING` of them,
    titles above the columns), with at least a fifth of the runs on each side."""
    xs = [width * (0.3 + 0.4 * i / 80) for i in range(81)]
    crossing = [sum(left < x < right for left, _, right, _ in rects) for x in xs]
    fewest = min(crossing)
    if fewest > MAX_CROSSING * len(rects):
        return None
    runs, run = [], []
    for x, n in zip(xs, crossing, strict=True):
        run = run + [x] if n == fewest else []
        runs.append(run)
    widest = max(runs, key=len)
    gutter = widest[len(widest) // 2]
    sides = [sum(right <= gutter for _, _, right, _ in rects),
             sum(left >= gutter for left, _, _, _ in rects)]
    return gutter if min(sides) >= 0.2 * len(rects) else None


def _page_text(page, textpage) -> str:
    """The page's text in reading order: two columns one after the other (PDFium alone joins
    the lines of both columns that share a baseline), anything spanning both first."""
    rects = [textpage.get_rect(i) for i in range(textpage.count_rects())]
    width, height = page.get_size()
    gutter = _gutter(rects, width) if len(rects) >= 6 else None
    if gutter is None:
        return textpage.get_text_bounded()
    columns_top = max(top for left, _, right, top in rects if not left < gutter < right)
    spanning = [bottom for left, bottom, right, _ in rects if left < gutter < right]
    if any(bottom < columns_top for bottom in spanning):  # spans between column lines
        return textpage.get_text_bounded()
    parts = [textpage.get_text_bounded(0, columns_top + 1, width, height)] if spanning else []
    parts += [textpage.get_text_bounded(0, 0, gutter, columns_top + 1),
              textpage.get_text_bounded(gutter, 0, width, columns_top + 1)]
    return "\n".join(parts)


def _page_lines(page, textpage) -> list[str]:
    text = _page_text(page, textpage).translate(_DROPPED)
    return [" ".join(line.split()) for line in text.replace("\r\n", "\n").split("\n")]


def _edge_key(line: str) -> str:
    return re.sub(r"\d+", "#", line.lower())


def _running_lines(pages: list[list[str]]) -> set[str]:
    """Edge-line keys repeated on at least REPEATS pages, and bare page numbers."""
    edges = Counter()
    for lines in pages:
        body = [line for line in lines if line]
        edges.update({_edge_key(line) for line in body[:EDGE_LINES] + body[-EDGE_LINES:]})
    return {key for key, n in edges.items() if n >= REPEATS and len(pages) > REPEATS} | {"#"}


def _strip_running(lines: list[str], running: set[str]) -> list[str]:
    body = [line for line in lines if line]
    head = 0
    while head < min(EDGE_LINES, len(body)) and _edge_key(body[head]) in running:
        head += 1
    tail = len(body)
    while tail > max(head, len(body) - EDGE_LINES) and _edge_key(body[tail - 1]) in running:
        tail -= 1
    return [literal(line) for line in body[head:tail]]


def _paragraphs(lines: list[str]) -> str:
    """Lines joined into paragraphs: a short line ending a sentence ends its paragraph."""
    if not lines:
        return ""
    full = sorted(len(line) for line in lines)[int(0.8 * (len(lines) - 1))]
    out = []
    for line in lines:
        out.append(line)
        short = len(line) < 0.7 * full
        out.append("\n\n" if short and _PARAGRAPH_END.search(line) else "\n")
    return _HYPHENATED.sub("", "".join(out).rstrip())


def _heading_lines(lines: list[str], marks: list[tuple[int, str]]) -> list[str]:
    """`lines` with each bookmark's title line replaced by its Markdown heading (a title not
    found on the page goes before the page's first line not yet claimed)."""
    out, at = list(lines), 0
    for level, title in marks:
        heading = f"{'#' * min(level, 6)} {' '.join(title.split())}"
        wanted = " ".join(title.lower().split())
        found = next((i for i in range(at, len(out))
                      if (line := out[i].strip().lower()) == wanted
                      or line.endswith(" " + wanted)), None)
        if found is None:
            out.insert(at, heading)
            at += 1
        else:
            out[found] = heading
            at = found + 1
    return out


def _outline(document) -> dict[int, list[tuple[int, str]]]:
    marks: dict[int, list[tuple[int, str]]] = {}
    for bookmark in document.get_toc():
        dest = bookmark.get_dest()
        page = dest.get_index() if dest is not None else None
        title = bookmark.get_title().strip()
        if page is not None and title:
            marks.setdefault(page, []).append((bookmark.level + 1, title))
    return marks


def _has_images(page) -> bool:
    import pypdfium2.raw as raw

    return any(obj.type == raw.FPDF_PAGEOBJ_IMAGE for obj in page.get_objects(max_depth=2))


OCR_DPI = 300  # tesseract's own advice for body text


def ocr_page(page) -> list[str]:
    """A page without a text layer, rendered and read by tesseract (`corpus.ocr`)."""
    import shutil
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory(prefix="edgerag-ocr-") as tmp:
        image = f"{tmp}/page.png"
        page.render(scale=OCR_DPI / 72).to_pil().save(image)
        done = subprocess.run([shutil.which("tesseract") or "tesseract", image, "stdout"],
                              capture_output=True, text=True, timeout=120)
    return [" ".join(line.split()) for line in done.stdout.splitlines()] if not \
        done.returncode else []


def read_pdf(path: str, ocr: bool = False) -> PdfText:
    """The cleaned text of the PDF at `path`; `Unreadable` with the reason if it cannot be.
    With `ocr`, a page without a text layer is read from its image instead of counted."""
    import pypdfium2 as pdfium

    try:
        document = pdfium.PdfDocument(path)
    except pdfium.PdfiumError as error:
        message = str(error).lower()
        raise Unreadable("encrypted" if "password" in message else "malformed-pdf") from None
    try:
        raw_pages, no_text = [], []
        for i in range(len(document)):
            page = document[i]
            textpage = page.get_textpage()
            lines = _page_lines(page, textpage)
            if not any(lines) and _has_images(page):
                lines = [literal(line) for line in ocr_page(page)] if ocr else []
                if not any(lines):
                    no_text.append(i + 1)
            raw_pages.append(lines)
            textpage.close()
            page.close()
        marks = _outline(document)
    finally:
        document.close()
    running = _running_lines(raw_pages)
    text, starts = "", []
    for i, lines in enumerate(raw_pages):
        page_text = _paragraphs(_heading_lines(_strip_running(lines, running), marks.get(i, [])))
        if text and page_text:
            text += "\n\n"
        starts.append(len(text))
        text += page_text
    return PdfText(text, starts, no_text)
