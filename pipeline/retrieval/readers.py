"""One reader per file format, and the worker processes that run the ones parsing binary formats.

A reader takes a path and returns a `Read`: the text (Markdown-shaped where the format has
headings), where each page starts if it has pages, or the reason it was skipped. PDF and Word
files are parsed in a child process with an address-space limit and a deadline, so a file that
would exhaust memory or hang a parser is skipped with its reason instead of taking the build
with it; up to `WORKERS` run at once. Text formats are read in this process.
"""

from __future__ import annotations

import multiprocessing
import os
import resource
import time
from collections import Counter
from dataclasses import dataclass
from multiprocessing.connection import wait
from pathlib import Path

from pipeline.retrieval import pdf, textfile, webpage, word

MAX_FILE_MB = 10  # a text file larger than this is a log or a dump, not a document
MAX_BINARY_MB = 512  # a PDF or Word file: a 1,000-page manual with figures is ~50 MB
TIME_LIMIT_S = 120.0  # per PDF or Word file; PDFium reads 200-400 pages/s here
MEMORY_LIMIT_MB = 2048  # address space a reader's child may add to what it was forked with
WORKERS = 2


@dataclass(frozen=True)
class Read:
    source: str
    text: str | None = None  # None when skipped
    reason: str = ""  # why it was skipped
    page_starts: tuple[int, ...] = ()  # offsets in `text` where each page starts; () if no pages
    encoding: str = ""  # text formats: the encoding the bytes were decoded with
    no_text_pages: tuple[int, ...] = ()  # pages (1-based) with images and no text layer


def _text(path: Path, source: str) -> Read:
    if path.stat().st_size > MAX_FILE_MB << 20:
        return Read(source, reason="too-large")
    try:
        text, encoding = textfile.decode(path.read_bytes())
    except textfile.Undecodable as reason:
        return Read(source, reason=str(reason))
    if path.suffix.lower() in (".html", ".htm"):
        text = webpage.html_to_text(text)
    return Read(source, text, encoding=encoding)


def _pdf(path: Path, source: str, ocr: bool = False) -> Read:
    try:
        found = pdf.read_pdf(str(path), ocr)
    except pdf.Unreadable as reason:
        return Read(source, reason=str(reason))
    if found.no_text_pages and len(found.no_text_pages) == len(found.page_starts):
        return Read(source, reason="scanned-only", no_text_pages=tuple(found.no_text_pages))
    return Read(source, found.text, page_starts=tuple(found.page_starts),
                no_text_pages=tuple(found.no_text_pages))


def _docx(path: Path, source: str) -> Read:
    try:
        return Read(source, word.read_docx(str(path)))
    except word.Unreadable as reason:
        return Read(source, reason=str(reason))


READERS = {".txt": _text, ".md": _text, ".rst": _text, ".html": _text, ".htm": _text,
           ".pdf": _pdf, ".docx": _docx}
IN_CHILD = (".pdf", ".docx")


def read(path: Path, source: str, ocr: bool = False) -> Read:
    """The file read by its format's reader, in this process; empty text is a skip. `ocr`:
    PDF pages without a text layer are read from their images (`corpus.ocr`)."""
    try:
        reader = READERS[path.suffix.lower()]
        found = reader(path, source, ocr=True) if ocr and reader is _pdf else reader(path, source)
    except OSError:
        return Read(source, reason="unreadable")
    if found.text is not None and not found.text.strip():
        return Read(source, reason="empty", no_text_pages=found.no_text_pages)
    return found


def _child(path: Path, source: str, conn, ocr: bool = False) -> None:
    import psutil

    limit = psutil.Process().memory_info().vms + (MEMORY_LIMIT_MB << 20)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    try:
        found = read(path, source, ocr)
    except MemoryError:
        found = Read(source, reason="over-memory-limit")
    except Exception as error:  # a parser's own bug on a hostile file: that file's reason
        found = Read(source, reason=f"reader-error ({type(error).__name__})")
    conn.send(found)
    conn.close()


def read_all(files: list[tuple[str, Path]], workers: int | None = None,
             ocr: bool = False) -> list[Read]:
    """Every file read, in the given order; PDF and Word files in limited child processes (by
    default `WORKERS`, at most one per core)."""
    workers = workers or min(WORKERS, os.cpu_count() or 1)
    results: dict[int, Read] = {}
    queue = []
    for i, (source, path) in enumerate(files):
        if path.suffix.lower() in IN_CHILD and path.stat().st_size > MAX_BINARY_MB << 20:
            results[i] = Read(source, reason="too-large")
        elif path.suffix.lower() in IN_CHILD:
            queue.append(i)
        else:
            results[i] = read(path, source)
    context = multiprocessing.get_context("fork")
    running: dict = {}  # connection → (index, process, deadline)
    while queue or running:
        while queue and len(running) < workers:
            i = queue.pop(0)
            receive, send = context.Pipe(duplex=False)
            process = context.Process(target=_child, args=(files[i][1], files[i][0], send, ocr))
            process.start()
            send.close()
            running[receive] = (i, process, time.monotonic() + TIME_LIMIT_S)
        timeout = max(0.0, min(d for _, _, d in running.values()) - time.monotonic())
        ready = wait(list(running), timeout)
        for conn in list(running):
            i, process, deadline = running[conn]
            if conn in ready:
                try:
                    results[i] = conn.recv()
                except EOFError:  # died before answering: killed by the memory limit
                    results[i] = Read(files[i][0], reason="over-memory-limit")
            elif time.monotonic() >= deadline:
                process.kill()
                results[i] = Read(files[i][0], reason="over-time-limit")
            else:
                continue
            conn.close()
            process.join()
            del running[conn]
    return [results[i] for i in range(len(files))]


@dataclass
class Report:
    """What a folder held and what became of it: the summary line and the run record."""

    reads: list[Read]
    skipped: list[tuple[str, str]]  # (source, reason) of entries never read: links, FIFOs…
    other: dict[str, int]  # files of formats not read, by suffix

    def all_skipped(self) -> list[tuple[str, str]]:
        return sorted(self.skipped + [(r.source, r.reason) for r in self.reads if r.text is None])

    def counts(self) -> dict[str, int]:
        """Skipped files by reason."""
        return dict(sorted(Counter(reason for _, reason in self.all_skipped()).items()))

    def formats(self) -> dict[str, int]:
        read = Counter(Path(r.source).suffix.lower().lstrip(".") for r in self.reads if r.text)
        return dict(read.most_common())

    def summary(self) -> str:
        """`read 41 files: 30 pdf, 9 md, 2 docx; skipped 3: 2 scanned-only, 1 encrypted`."""
        formats, counts = self.formats(), self.counts()
        line = f"read {sum(formats.values())} files" + (
            ": " + ", ".join(f"{n} {kind}" for kind, n in formats.items()) if formats else "")
        if counts:
            line += f"; skipped {sum(counts.values())}: " + ", ".join(
                f"{n} {reason}" for reason, n in sorted(counts.items(), key=lambda c: -c[1]))
        if self.other:
            line += f"; not a format read: {sum(self.other.values())} (" + ", ".join(
                f"{n} {suffix}" for suffix, n in sorted(self.other.items())) + ")"
        return line

    def held(self) -> str:
        """`5 files (1 .md, 4 .pdf); skipped: 4 encrypted, 1 empty`, or "" for an empty folder."""
        suffixes = Counter(Path(source).suffix.lower() or "(no suffix)" for source, _ in
                           self.skipped + [(r.source, "") for r in self.reads])
        suffixes.update(self.other)
        if not suffixes:
            return ""
        counts = ", ".join(f"{n} {reason}" for reason, n in self.counts().items())
        return (f"{sum(suffixes.values())} files ("
                + ", ".join(f"{n} {suffix}" for suffix, n in sorted(suffixes.items())) + ")"
                + (f"; skipped: {counts}" if counts else "; none in a format read"))

    def record(self) -> dict:
        """For the run record: every skipped file with its reason, the encoding of every text
        file that was not UTF-8, and the pages without a text layer of each PDF."""
        return {
            "skipped": [{"file": source, "reason": reason}
                        for source, reason in self.all_skipped()],
            "encodings": {r.source: r.encoding for r in self.reads
                          if r.text and r.encoding not in ("", "utf-8")},
            "no_text_pages": {r.source: list(r.no_text_pages) for r in self.reads
                              if r.no_text_pages},
            "formats_read": self.formats(),
            "formats_not_read": self.other,
        }
