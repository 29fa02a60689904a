"""Reading a corpus folder by format: PDFs (outline, columns, hyphens, running headers, scans,
encryption, truncation), Word files, text in any encoding, and the entries a folder should not
feed the build (links outside it, FIFOs, names that are not UTF-8), each with its reason."""

from __future__ import annotations

import dataclasses
import os
import shutil
import sqlite3
import time

import pytest

from pipeline import layout
from pipeline.config import CorpusConfig
from pipeline.errors import BadInput
from pipeline.retrieval import corpus, keyword, pdf, readers, sections

HEADER = "Regulation 12 - Operators' Manual"


def write_pdf(path, pages, outline=(), header=False, encrypt=False, image_pages=()):
    """A PDF of `pages` (each a list of lines), `outline` as (level, title, page index), a
    running header and page-number footer if `header`, image-only pages at `image_pages`."""
    from fpdf import FPDF
    from PIL import Image

    class Doc(FPDF):
        def header(self):
            if header:
                self.set_font("helvetica", size=9)
                self.cell(0, 8, HEADER, new_x="LMARGIN", new_y="NEXT")

        def footer(self):
            if header:
                self.set_y(-15)
                self.set_font("helvetica", size=9)
                self.cell(0, 8, str(self.page_no()), align="C")

    doc = Doc()
    if encrypt:
        doc.set_encryption(owner_password="owner", user_password="user")
    marks = {}
    for level, title, page in outline:
        marks.setdefault(page, []).append((level, title))
    for i, lines in enumerate(pages):
        doc.add_page()
        if i in image_pages:
            doc.image(Image.new("RGB", (60, 60), "gray"), x=20, y=20, w=100)
            continue
        doc.set_font("helvetica", size=11)
        titles = dict((t, lv) for lv, t in marks.get(i, []))
        for line in lines:
            if line in titles:
                doc.start_section(line, level=titles[line])
            doc.cell(0, 6, line, new_x="LMARGIN", new_y="NEXT")
    doc.output(str(path))


def pages_of(prefix, n, lines=8):
    return [[f"{prefix} {p + 1} says thing number {i} about the rules of the road in detail."
             for i in range(lines)] for p in range(n)]


def test_outline_gives_headings_and_pages_and_running_lines_go(tmp_path):
    pages = pages_of("Page", 4)
    pages[0][0:0] = ["Introduction"]
    pages[2][3:3] = ["Log files"]
    pages[1][-1] = "an extraordi-"
    pages[1].append("nary sentence that ends here.")
    write_pdf(tmp_path / "manual.pdf", pages, header=True,
              outline=[(0, "Introduction", 0), (1, "Log files", 2)])
    found = pdf.read_pdf(str(tmp_path / "manual.pdf"))
    assert HEADER not in found.text, "a header on every page is running, not text"
    lines = found.text.splitlines()
    assert not any(line.strip().isdigit() for line in lines), "page numbers are dropped"
    assert lines[0] == "# Introduction"
    assert "## Log files" in lines, "the outline's level and title, at its line"
    assert "an extraordinary sentence" in found.text, "a hyphenated line end is joined"
    assert len(found.page_starts) == 4 and found.page_starts[0] == 0
    third = found.text[found.page_starts[2]:found.page_starts[3]]
    assert third.startswith("Page 3 says") and "## Log files" in third
    blocks = sections.blocks(found.text, sections.style_of("manual.pdf"))
    assert {b.path for b in blocks} == {("Introduction",), ("Introduction", "Log files")}


def test_ligatures_and_pdfium_hyphen_marks_are_normalized():
    """fpdf2's core fonts draw neither a ligature nor a soft hyphen: the translation itself."""
    text = "of\ufb01ce hyphen\x02ated soft\u00adly \ufb02ow".translate(pdf._DROPPED)
    assert text == "office hyphenated softly flow"


def test_pdf_without_outline_chunks_by_paragraphs(tmp_path):
    first = ["A first paragraph runs over two lines of the page and goes on a", "bit."]
    second = ["The second paragraph is another run of lines that is long enough", "too."]
    write_pdf(tmp_path / "plain.pdf", [first + second])
    found = pdf.read_pdf(str(tmp_path / "plain.pdf"))
    blocks = sections.blocks(found.text, sections.style_of("plain.pdf"))
    assert [found.text[b.start:b.end] for b in blocks] == ["\n".join(first), "\n".join(second)]
    assert all(b.path == () for b in blocks)


def test_two_columns_are_read_one_after_the_other(tmp_path):
    from fpdf import FPDF

    left = ["The left column starts here and", "goes on down the page until",
            "its last line ends it."]
    right = ["The right column is read after", "the left one has been read", "to its end."]
    doc = FPDF()
    doc.add_page()
    doc.set_font("helvetica", size=16)
    doc.text(10, 12, "A title over both columns")
    doc.set_font("helvetica", size=11)
    for i, (a, b) in enumerate(zip(left, right, strict=True)):  # interleaved in the stream
        doc.text(10, 24 + 6 * i, a)
        doc.text(110, 24 + 6 * i, b)
    doc.output(str(tmp_path / "cols.pdf"))
    text = pdf.read_pdf(str(tmp_path / "cols.pdf")).text
    assert text.splitlines() == ["A title over both columns", *left, *right]


def test_image_only_pages_are_counted_and_a_scan_is_skipped(tmp_path, capsys):
    write_pdf(tmp_path / "mixed.pdf", pages_of("Text", 3), image_pages={1})
    write_pdf(tmp_path / "scan.pdf", [[], []], image_pages={0, 1})
    docs, report = corpus.dir_documents(tmp_path)
    assert [d.source for d in docs] == ["mixed.pdf"]
    assert report.counts() == {"scanned-only": 1}
    assert report.record()["no_text_pages"] == {"mixed.pdf": [2], "scan.pdf": [1, 2]}
    err = capsys.readouterr().err
    assert "mixed.pdf: 1 of 3 pages have no text layer (scanned?) and are not indexed: p. 2" in err
    assert len(docs[0].page_starts) == 3


def _scanned_pdf(path, words):
    """A one-page PDF whose only content is a picture of `words` (what a scanner makes)."""
    from fpdf import FPDF
    from PIL import Image, ImageDraw, ImageFont

    picture = Image.new("RGB", (1600, 300), "white")
    ImageDraw.Draw(picture).text((40, 90), words, fill="black",
                                 font=ImageFont.load_default(size=72))
    doc = FPDF()
    doc.add_page()
    doc.image(picture, x=10, y=20, w=190)
    doc.output(str(path))


@pytest.mark.skipif(shutil.which("tesseract") is None, reason="tesseract is not installed")
def test_ocr_reads_a_scanned_page_when_asked_and_only_then(tmp_path):
    _scanned_pdf(tmp_path / "scan.pdf", "Rotate the logs weekly")
    _, plain = corpus.dir_documents(tmp_path)
    assert plain.counts() == {"scanned-only": 1}
    docs, report = corpus.dir_documents(tmp_path, ocr=True)
    assert report.counts() == {} and "logs weekly" in docs[0].text.lower()
    assert report.record()["no_text_pages"] == {}


def test_ocr_without_tesseract_fails_at_configure(monkeypatch, tmp_path):
    monkeypatch.setattr(shutil, "which", lambda _name: None)
    with pytest.raises(BadInput, match="corpus.ocr=true reads scanned pages with tesseract, "
                                       "which is not installed"):
        corpus.check(CorpusConfig(kind="dir", path=str(tmp_path), ocr=True))


def test_encrypted_truncated_and_malformed_pdfs_are_skipped_with_their_reason(tmp_path):
    write_pdf(tmp_path / "locked.pdf", pages_of("Secret", 1), encrypt=True)
    write_pdf(tmp_path / "whole.pdf", pages_of("Whole", 3))
    data = (tmp_path / "whole.pdf").read_bytes()
    (tmp_path / "truncated.pdf").write_bytes(data[: len(data) // 2])
    (tmp_path / "garbage.pdf").write_bytes(b"%PDF-1.7\nthis is not a PDF body at all")
    docs, report = corpus.dir_documents(tmp_path)
    assert [d.source for d in docs] == ["whole.pdf"]
    assert report.all_skipped() == [("garbage.pdf", "malformed-pdf"), ("locked.pdf", "encrypted"),
                                    ("truncated.pdf", "malformed-pdf")]
    assert report.summary() == "read 1 files: 1 pdf; skipped 3: 2 malformed-pdf, 1 encrypted"


def _sleeps(path, source):
    time.sleep(30)


def _allocates(path, source):
    return bytearray(4 << 30)


@pytest.mark.parametrize(("reader", "reason"), [(_sleeps, "over-time-limit"),
                                                (_allocates, "over-memory-limit")])
def test_a_pdf_that_hangs_or_exhausts_memory_is_skipped_and_the_rest_read(
        tmp_path, monkeypatch, reader, reason):
    write_pdf(tmp_path / "bad.pdf", pages_of("Bad", 1))
    write_pdf(tmp_path / "good.pdf", pages_of("Good", 1))
    (tmp_path / "notes.md").write_text("# Notes\n\nKept.\n")
    real = readers.READERS[".pdf"]
    monkeypatch.setitem(readers.READERS, ".pdf",
                        lambda path, source: (reader if source == "bad.pdf" else real)(path,
                                                                                       source))
    monkeypatch.setattr(readers, "TIME_LIMIT_S", 2.0)
    monkeypatch.setattr(readers, "MEMORY_LIMIT_MB", 256)
    started = time.monotonic()
    docs, report = corpus.dir_documents(tmp_path)
    assert time.monotonic() - started < 10
    assert [d.source for d in docs] == ["good.pdf", "notes.md"]
    assert report.all_skipped() == [("bad.pdf", reason)]


def write_docx(path):
    import docx

    document = docx.Document()
    document.add_heading("Operating rules", level=1)
    document.add_paragraph("Every operator keeps a log.")
    document.add_heading("Log files", level=2)
    document.add_paragraph("# not a heading, only a paragraph starting with a hash")
    table = document.add_table(rows=2, cols=2)
    for r, row in enumerate([("field", "meaning"), ("date", "when it happened")]):
        for c, value in enumerate(row):
            table.cell(r, c).text = value
    document.save(str(path))


def test_word_heading_styles_are_sections_and_tables_are_read(tmp_path):
    write_docx(tmp_path / "rules.docx")
    (tmp_path / "broken.docx").write_bytes(b"PK\x03\x04 not a real zip")
    docs, report = corpus.dir_documents(tmp_path)
    assert report.all_skipped() == [("broken.docx", "malformed-docx")]
    text = docs[0].text
    blocks = sections.blocks(text, sections.style_of("rules.docx"))
    assert [(b.path, text[b.start:b.end]) for b in blocks] == [
        (("Operating rules",), "Every operator keeps a log."),
        (("Operating rules", "Log files"),
         "    # not a heading, only a paragraph starting with a hash"),
        (("Operating rules", "Log files"), "field | meaning"),
        (("Operating rules", "Log files"), "date | when it happened"),
    ]
    assert docs[0].page_starts == ()


ENCODED = {
    "latin1.txt": ("Le café, la crème brûlée et le théâtre sont fermés ce soir à Genève.",
                   "latin-1"),
    "cp1252.md": ("# Prix\n\nLe prix est de 5 € – « très cher » selon l’éditeur.", "cp1252"),
    "utf16.rst": ("Überschrift\n===========\n\nGrüße aus Köln.", "utf-16"),
    "bom.md": ("# Title on line one\n\nBody.", "utf-8-sig"),
}


def test_text_in_any_encoding_is_read_and_its_encoding_recorded(tmp_path):
    for name, (text, encoding) in ENCODED.items():
        (tmp_path / name).write_bytes(text.encode(encoding))
    docs, report = corpus.dir_documents(tmp_path)
    assert {d.source: d.text for d in docs} == {name: t for name, (t, _) in ENCODED.items()}
    encodings = report.record()["encodings"]
    assert set(encodings) == set(ENCODED), encodings
    assert encodings["utf16.rst"] == "utf-16" and encodings["bom.md"] == "utf-8-sig"


def test_a_bom_does_not_hide_the_first_heading(tmp_path):
    (tmp_path / "bom.md").write_bytes(b"\xef\xbb\xbf# Title\n\nBody text.\n")
    docs, _ = corpus.dir_documents(tmp_path)
    assert docs[0].text.startswith("# Title")
    blocks = sections.blocks(docs[0].text, "markdown")
    assert [b.path for b in blocks] == [("Title",)]


def test_folder_entries_that_must_not_be_read_are_skipped_with_a_reason(tmp_path):
    root, outside = tmp_path / "notes", tmp_path / "elsewhere"
    root.mkdir()
    outside.mkdir()
    (outside / "secret.md").write_text("# Secret\n\nNot part of the corpus.\n")
    (root / "kept.md").write_text("# Kept\n\nRead once.\n")
    (root / "sub").mkdir()
    (root / "sub" / "deep.txt").write_text("Deep text.\n")
    os.symlink(outside / "secret.md", root / "leak.md")
    os.symlink(outside, root / "leakdir")
    os.symlink(root / "kept.md", root / "alias.md")
    os.symlink(root / "sub", root / "subalias")
    os.symlink(root / "missing.md", root / "dangling.md")
    os.mkfifo(root / "pipe.md")
    (root / "report.xlsx").write_bytes(b"PK")
    with open(os.path.join(os.fsencode(root), b"caf\xe9.md"), "wb") as handle:
        handle.write(b"# Caf\xc3\xa9\n\nA name that is not UTF-8.\n")
    docs, report = corpus.dir_documents(root)
    assert [d.source for d in docs] == ["kept.md", "sub/deep.txt"]
    assert report.all_skipped() == [
        ("alias.md", "duplicate-link"), ("caf\\xe9.md", "name-not-utf8"),
        ("dangling.md", "broken-link"), ("leak.md", "outside-corpus.path"),
        ("leakdir", "outside-corpus.path"), ("pipe.md", "fifo"),
        ("subalias", "duplicate-link")]
    assert report.other == {".xlsx": 1}
    assert report.summary() == (
        "read 2 files: 1 md, 1 txt; skipped 7: 2 duplicate-link, 2 outside-corpus.path, "
        "1 broken-link, 1 fifo, 1 name-not-utf8; not a format read: 1 (1 .xlsx)")


def test_no_readable_documents_names_what_the_folder_held(tmp_path):
    write_pdf(tmp_path / "locked.pdf", pages_of("Secret", 1), encrypt=True)
    write_pdf(tmp_path / "scan.pdf", [[]], image_pages={0})
    (tmp_path / "empty.md").write_text("\n")
    (tmp_path / "photo.png").write_bytes(b"\x89PNG")
    with pytest.raises(BadInput) as caught:
        corpus.documents(CorpusConfig(kind="dir", path=str(tmp_path)))
    assert str(caught.value) == (
        f"corpus {tmp_path} has no readable documents: it holds 4 files (1 .md, 2 .pdf, 1 .png); "
        "skipped: 1 empty, 1 encrypted, 1 scanned-only.")


@pytest.fixture(scope="module")
def tokenizer_file(tiny_embedder_source):
    return tiny_embedder_source / layout.TOKENIZER


def test_a_huge_line_without_spaces_is_not_one_giant_chunk(tmp_path, tokenizer_file):
    # #45 found a 9 MiB line; 1 MiB is cut the same way, in a tenth of the time
    (tmp_path / "dump.txt").write_bytes(b"x" * (1 << 20))
    cfg = CorpusConfig(kind="dir", path=str(tmp_path), chunk_tokens=48, overlap_tokens=8)
    docs, _ = corpus.documents(cfg)
    chunks = corpus.chunk_corpus(docs, cfg, tokenizer_file, 64)
    limit = 48 * corpus.MAX_CHUNK_CHARS_PER_TOKEN
    assert max(len(c.text) for c in chunks) == limit
    assert "".join(c.text for c in chunks) == docs[0].text
    assert all(docs[0].text[c.start:c.end] == c.text for c in chunks)


def test_pdf_chunks_know_their_pages_in_jsonl_and_sqlite(tmp_path, tokenizer_file):
    folder = tmp_path / "docs"
    folder.mkdir()
    pages = pages_of("Page", 3)
    pages[0][0:0] = ["Introduction"]
    pages[1][0:0] = ["Log files"]
    write_pdf(folder / "manual.pdf", pages, outline=[(0, "Introduction", 0), (0, "Log files", 1)])
    (folder / "notes.md").write_text("# Notes\n\nNo pages here.\n")
    cfg = CorpusConfig(kind="dir", path=str(folder), chunking="sections", chunk_tokens=48,
                       overlap_tokens=8)
    docs, _ = corpus.documents(cfg)
    chunks = corpus.chunk_corpus(docs, cfg, tokenizer_file, 64)
    by_source = {}
    for c in chunks:
        by_source.setdefault(c.source, []).append(c)
    assert {(c.page_start, c.page_end) for c in by_source["notes.md"]} == {(None, None)}
    pdf_chunks = by_source["manual.pdf"]
    assert pdf_chunks[0].page_start == 1 and pdf_chunks[-1].page_end == 3
    for c in pdf_chunks:
        doc = docs[0]
        assert doc.page_starts[c.page_start - 1] <= c.start
        assert c.page_end == len(doc.page_starts) or c.end <= doc.page_starts[c.page_end]
    assert any(c.heading.endswith("Log files") and c.page_start == 2 for c in pdf_chunks)
    corpus.write_chunks(tmp_path / layout.CHUNKS, chunks)
    assert corpus.read_chunks(tmp_path / layout.CHUNKS) == chunks
    keyword.write_store(tmp_path / layout.STORE, chunks)
    with sqlite3.connect(tmp_path / layout.STORE) as db:
        assert keyword.pages(db, pdf_chunks[-1].key) == (pdf_chunks[-1].page_start, 3)
        assert keyword.pages(db, by_source["notes.md"][0].key) == (None, None)
    db.close()


def test_stores_and_chunk_files_written_before_pages_still_read(tmp_path):
    old = '{"end": 5, "key": 1, "source": "doc", "start": 0, "text": "chunk"}\n'
    (tmp_path / layout.CHUNKS).write_text(old)
    chunk = corpus.read_chunks(tmp_path / layout.CHUNKS)[0]
    assert (chunk.page_start, chunk.page_end) == (None, None)
    corpus.write_chunks(tmp_path / "again.jsonl", [chunk])
    assert (tmp_path / "again.jsonl").read_text() == old, "no page fields: the old bytes"
    with sqlite3.connect(tmp_path / "old.sqlite") as db:
        db.execute("CREATE TABLE chunks (key INTEGER PRIMARY KEY, source TEXT, start INTEGER, "
                   "end INTEGER, text TEXT, heading TEXT)")
        db.execute("INSERT INTO chunks VALUES (1, 'doc', 0, 5, 'chunk', '')")
        assert keyword.pages(db, 1) == (None, None)
    db.close()
    assert dataclasses.replace(chunk, page_start=3).page_end is None


def test_a_device_node_is_skipped_with_its_reason(tmp_path):
    import stat

    try:
        os.mknod(tmp_path / "null.txt", 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    except PermissionError:
        pytest.skip("making a device node needs root (CAP_MKNOD)")
    (tmp_path / "kept.txt").write_text("Kept text.\n")
    docs, report = corpus.dir_documents(tmp_path)
    assert [d.source for d in docs] == ["kept.txt"]
    assert report.all_skipped() == [("null.txt", "device")]


def test_an_edited_pdf_page_changes_only_the_chunks_on_it(tmp_path, tokenizer_file):
    """What the vector store re-embeds and a delta carries is what changed: chunks are keyed by
    their text, so an edit to one page of a long PDF leaves every other chunk's key alone."""
    def chunks_of(pages):
        folder = tmp_path / f"docs-{len(list(tmp_path.iterdir()))}"
        folder.mkdir()
        titled = [[f"Chapter {n + 1}", *lines] for n, lines in enumerate(pages)]
        write_pdf(folder / "manual.pdf", titled,
                  outline=[(0, f"Chapter {n + 1}", n) for n in range(len(pages))])
        cfg = CorpusConfig(kind="dir", path=str(folder), chunking="sections", chunk_tokens=48,
                           overlap_tokens=8)
        return corpus.chunk_corpus(corpus.documents(cfg)[0], cfg, tokenizer_file, 64)

    pages = pages_of("Page", 12)
    before = chunks_of(pages)
    pages[4] = [line.replace("rules of the road", "rules of the sea") for line in pages[4]]
    after = chunks_of(pages)
    changed = {c.key for c in after} - {c.key for c in before}
    assert changed and all(c.page_start <= 5 <= c.page_end for c in after if c.key in changed)
    assert len(changed) < len(after) / 6
