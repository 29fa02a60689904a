"""The user's documents as chunks the embedder can take whole.

Chunks are cut with the embedder's own tokenizer so that none is truncated when embedded, and
on word boundaries so that re-tokenizing a chunk's text gives back exactly its window of tokens.
Each chunk keeps character offsets into its document, so an answer can cite the exact passage.
Two ways to cut (`corpus.chunking`): `tokens`, fixed windows with overlap; `sections`, whole
paragraphs packed under their heading (`pipeline/retrieval/sections.py`), each chunk carrying its
heading path (`file › section › subsection`) and, with `corpus.heading_in_text`, embedding it
before its text, so a paragraph that never names its topic is still found by it.
A folder's files are read by format (`readers.py`: text, Markdown, reST, HTML, PDF, Word); those
that cannot be read are skipped with their reason and counted, never fatal: a user's folder is
messy. A PDF's chunks know their pages (`page_start`, `page_end`).
"""

from __future__ import annotations

import bisect
import dataclasses
import hashlib
import json
import shutil
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from tokenizers import Tokenizer

from pipeline.config import CorpusConfig
from pipeline.errors import BadInput
from pipeline.progress import log
from pipeline.retrieval import folder, readers, sections

MAX_CHUNK_CHARS_PER_TOKEN = 16  # a chunk is also cut at this many characters per token of its size


@dataclass(frozen=True)
class Document:
    source: str
    text: str
    page_starts: tuple[int, ...] = ()  # where each page starts in `text`; () without pages


@dataclass(frozen=True)
class Chunk:
    key: int
    source: str
    start: int
    end: int
    text: str
    heading: str = ""  # `file › section › …` when cut by sections
    embeds_heading: bool = False  # the embedder saw `heading` + newline + `text`
    page_start: int | None = None  # first and last page (1-based) of a paged format, else None
    page_end: int | None = None


def embedding_text(chunk: Chunk) -> str:
    """What the embedder sees for this chunk (and what its stored vector is keyed by)."""
    return f"{chunk.heading}\n{chunk.text}" if chunk.embeds_heading else chunk.text


def pydoc_documents() -> list[Document]:
    """Python's language reference, one document per topic, in name order."""
    from pydoc_data.topics import topics

    return [Document(f"pydoc:{name}", topics[name]) for name in sorted(topics)
            if topics[name].strip()]


def dir_documents(root: str | Path, ocr: bool = False) -> tuple[list[Document], readers.Report]:
    """Every file under `root` of a format `readers` reads, and what became of the rest; each
    skipped file and each PDF's pages without a text layer logged on a line of its own."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise BadInput(f"corpus.path={str(root)!r} is not a folder.")
    listing = folder.list_folder(root, tuple(readers.READERS))
    reads = readers.read_all(listing.files, ocr=ocr)
    report = readers.Report(reads, listing.skipped, dict(sorted(listing.other.items())))
    for source, reason in report.all_skipped():
        log(f"skipping {source}: {reason}")
    for found in reads:
        if found.text and found.no_text_pages:
            pages = ", ".join(map(str, found.no_text_pages))
            log(f"{found.source}: {len(found.no_text_pages)} of {len(found.page_starts)} pages "
                f"have no text layer (scanned?) and are not indexed: p. {pages}")
    documents = [Document(r.source, r.text, r.page_starts) for r in reads if r.text]
    return documents, report


KINDS = ("pydoc_topics", "dir")
CHUNKING = ("tokens", "sections")


def check(cfg: CorpusConfig) -> None:
    """What can be known of a corpus setting before its documents are read (the chunk's fit in
    the embedder's window needs the embedder's tokenizer: `_check_window`)."""
    if cfg.kind not in KINDS:
        raise BadInput(f"corpus.kind={cfg.kind!r} is not allowed; choose one of: "
                       f"{', '.join(KINDS)}.")
    if cfg.chunking not in CHUNKING:
        raise BadInput(f"corpus.chunking={cfg.chunking!r} is not allowed; choose one of: "
                       f"{', '.join(CHUNKING)}.")
    if cfg.kind == "dir" and not cfg.path:
        raise BadInput("corpus.path must be set when corpus.kind=dir.")
    if cfg.ocr and shutil.which("tesseract") is None:
        raise BadInput("corpus.ocr=true reads scanned pages with tesseract, which is not "
                       "installed; install it (Debian: apt install tesseract-ocr) or drop ocr.")
    if cfg.kind == "dir" and cfg.watch.startswith("~"):
        raise BadInput(f"corpus.path={cfg.path!r}: DVC does not expand `~`; give the folder's "
                       "absolute path (corpus.path=$HOME/…).")
    if cfg.kind == "dir" and not Path(cfg.path).expanduser().is_dir():
        raise BadInput(f"corpus.path={str(Path(cfg.path).expanduser())!r} is not a folder.")
    if cfg.chunk_tokens < 1:
        raise BadInput(f"corpus.chunk_tokens={cfg.chunk_tokens} must be at least 1.")
    if cfg.max_documents < 0:
        raise BadInput(f"corpus.max_documents={cfg.max_documents} must be at least 0 "
                       "(0 reads every document).")
    if not 0 <= cfg.overlap_tokens < cfg.chunk_tokens:
        raise BadInput(f"corpus.overlap_tokens={cfg.overlap_tokens} must be ≥ 0 and less than "
                       f"corpus.chunk_tokens={cfg.chunk_tokens}.")


def documents(cfg: CorpusConfig) -> tuple[list[Document], readers.Report]:
    """The corpus's documents and the report of what its folder held (empty for pydoc)."""
    check(cfg)
    if cfg.kind == "pydoc_topics":
        found, report = pydoc_documents(), readers.Report([], [], {})
    else:
        found, report = dir_documents(cfg.path, cfg.ocr)
    if not found:
        held = report.held()
        raise BadInput(f"corpus {cfg.path or cfg.kind} has no readable documents"
                       + (f": it holds {held}." if held else "."))
    return (found[: cfg.max_documents] if cfg.max_documents else found), report


def _check_window(cfg: CorpusConfig, tokenizer: Tokenizer, max_seq_len: int) -> None:
    """A chunk must fit the embedder's window beside its special tokens ([CLS], [SEP])."""
    limit = max_seq_len - tokenizer.num_special_tokens_to_add(False)
    if not 1 <= cfg.chunk_tokens <= limit:
        raise BadInput(f"corpus.chunk_tokens={cfg.chunk_tokens} must be between 1 and {limit} "
                       f"(embedder.max_seq_len={max_seq_len} minus special tokens).")


def _windows(word_starts: list[bool], size: int, overlap: int) -> list[tuple[int, int]]:
    """Token windows of at most `size`, cut where a word starts when one is in reach."""
    n, start, spans = len(word_starts), 0, []
    while start < n:
        end = min(start + size, n)
        if end < n:
            end = next((e for e in range(end, start, -1) if word_starts[e]), end)
        spans.append((start, end))
        if end == n:
            break
        wanted = max(end - overlap, start + 1)
        start = next((s for s in range(wanted, end) if word_starts[s]), end)
    return spans


def _encode(tokenizer: Tokenizer, text: str):
    encoding = tokenizer.encode(text, add_special_tokens=False)
    words = encoding.word_ids
    return encoding, [i == 0 or words[i] != words[i - 1] for i in range(len(words))]


def chunk_document(doc: Document, tokenizer: Tokenizer, size: int, overlap: int,
                   start: int = 0, end: int | None = None, heading: str = "",
                   embeds_heading: bool = False) -> list[Chunk]:
    """Token windows over `doc.text[start:end]` (all of it by default)."""
    end = len(doc.text) if end is None else end
    encoding, word_starts = _encode(tokenizer, doc.text[start:end])
    chunks = []
    for first, last in _windows(word_starts, size, overlap):
        a, b = start + encoding.offsets[first][0], start + encoding.offsets[last - 1][1]
        chunks.append(Chunk(-1, doc.source, a, b, doc.text[a:b], heading, embeds_heading))
    return chunks


def _heading(doc: Document, path: tuple[str, ...], tokenizer: Tokenizer, size: int) -> str:
    """`source › title › …`, cut to half the chunk's tokens so the text keeps the rest."""
    if size < 2:
        return ""
    heading = " › ".join((doc.source, *path))
    offsets = tokenizer.encode(heading, add_special_tokens=False).offsets
    return heading if len(offsets) <= size // 2 else heading[: offsets[size // 2 - 1][1]]


def section_chunks(doc: Document, tokenizer: Tokenizer, size: int, overlap: int,
                   heading_in_text: bool) -> list[Chunk]:
    """Paragraphs packed whole, in order, into chunks that never cross a heading; a paragraph
    longer than a chunk is cut into token windows of its own."""

    def count(text: str) -> int:
        return len(tokenizer.encode(text, add_special_tokens=False).ids)

    chunks: list[Chunk] = []
    group: list[sections.Block] = []

    def flush() -> None:
        if group:
            a, b = group[0].start, group[-1].end
            chunks.append(Chunk(-1, doc.source, a, b, doc.text[a:b], heading, heading_in_text))
            group.clear()

    path = None
    for block in sections.blocks(doc.text, sections.style_of(doc.source)):
        if block.path != path:
            flush()
            path = block.path
            heading = _heading(doc, path, tokenizer, size)
            budget = size - (count(heading) if heading_in_text else 0)
        if count(doc.text[(group or [block])[0].start:block.end]) <= budget:
            group.append(block)
            continue
        flush()
        if count(doc.text[block.start:block.end]) <= budget:
            group.append(block)
        else:
            chunks += chunk_document(doc, tokenizer, budget, min(overlap, budget - 1),
                                     block.start, block.end, heading, heading_in_text)
    flush()
    return chunks


def chunk_key(source: str, text: str, occurrence: int, heading: str = "",
              embeds_heading: bool = False) -> int:
    """A key made of what the chunk is, so an unchanged chunk keeps its key in every rebuild and
    a device's index and a newer release agree on it: sha256 of the source, the text (with its
    heading, when it has one) and which repeat of them in the source it is, cut to 63 bits
    (SQLite's INTEGER and usearch's uint64 both hold it)."""
    body = f"{heading}\0{int(embeds_heading)}\0{text}" if heading else text
    digest = hashlib.sha256(f"{source}\0{occurrence}\0{body}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def _bounded(chunk: Chunk, limit: int) -> list[Chunk]:
    """`chunk` cut into pieces of at most `limit` characters, at a space where one is in the
    second half: a 9 MiB line with no spaces is one token to the tokenizer ([UNK]), not text
    to embed whole."""
    pieces, a = [], 0
    while len(chunk.text) - a > limit:
        space = chunk.text.rfind(" ", a + limit // 2, a + limit)
        b = space + 1 if space >= 0 else a + limit
        pieces.append((a, b))
        a = b
    pieces.append((a, len(chunk.text)))
    if len(pieces) == 1:
        return [chunk]
    return [dataclasses.replace(chunk, start=chunk.start + a, end=chunk.start + b,
                                text=chunk.text[a:b]) for a, b in pieces]


def _pages(doc: Document, start: int, end: int) -> tuple[int | None, int | None]:
    """The 1-based pages a span of `doc.text` starts and ends on; None for a format without."""
    if not doc.page_starts:
        return None, None
    return (bisect.bisect_right(doc.page_starts, start),
            bisect.bisect_right(doc.page_starts, max(start, end - 1)))


def chunk_corpus(docs: list[Document], cfg: CorpusConfig, tokenizer_file: Path,
                 max_seq_len: int) -> list[Chunk]:
    """All chunks in document order, each keyed by `chunk_key`."""
    tokenizer = Tokenizer.from_file(str(tokenizer_file))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    _check_window(cfg, tokenizer, max_seq_len)
    size, overlap = cfg.chunk_tokens, cfg.overlap_tokens
    limit = size * MAX_CHUNK_CHARS_PER_TOKEN
    chunks, seen = [], Counter()
    for doc in docs:
        cut = (section_chunks(doc, tokenizer, size, overlap, cfg.heading_in_text)
               if cfg.chunking == "sections" else chunk_document(doc, tokenizer, size, overlap))
        for c in (piece for whole in cut for piece in _bounded(whole, limit)):
            what = (c.source, c.heading, c.embeds_heading, c.text)
            seen[what] += 1
            key = chunk_key(c.source, c.text, seen[what] - 1, c.heading, c.embeds_heading)
            first, last = _pages(doc, c.start, c.end)
            chunks.append(Chunk(key, c.source, c.start, c.end, c.text, c.heading,
                                c.embeds_heading, first, last))
    if len({c.key for c in chunks}) != len(chunks):  # 2^-63 per pair; never silently merge
        raise BadInput("two different chunks drew the same 63-bit key; report this corpus.")
    return chunks


def write_chunks(path: Path, chunks: list[Chunk]) -> None:
    """One JSON line per chunk; the section and page fields only where a chunk has them (a
    reader takes a missing one as empty, or None), so a corpus without either keeps its bytes."""
    with open(path, "w", encoding="utf-8") as handle:
        for chunk in chunks:
            row = {k: v for k, v in asdict(chunk).items()
                   if k not in ("heading", "embeds_heading", "page_start", "page_end")
                   or v not in ("", False, None)}
            handle.write(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n")


def read_chunks(path: Path) -> list[Chunk]:
    with open(path, encoding="utf-8") as handle:
        return [Chunk(**json.loads(line)) for line in handle if line.strip()]
