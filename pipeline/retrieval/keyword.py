"""The keyword side of retrieval: the chunks in a SQLite database with an FTS5 index.

A phone reads it natively (Android and iOS ship SQLite with FTS5), and it holds each chunk's
text, heading path, source, character offsets and pages (NULL for a format without pages; a
store written before pages has no such columns: `pages` reads both), so an app needs the
`.pte`s, `index.usearch` and this one file. Headings and text are both searched. Keys are the
usearch keys. The tokenizer keeps `_` inside words, so code identifiers (`add_subdirectory`,
`__init__`) are single terms; a dotted name (`os.path.join`) is its parts.
Queries and ranking live with the on-device loop (`pipeline/device/retrieve.py`).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from pipeline.retrieval.corpus import Chunk

TOKENIZE = "unicode61 tokenchars '_'"
SCHEMA = f"""
CREATE TABLE chunks (key INTEGER PRIMARY KEY, source TEXT NOT NULL, start INTEGER NOT NULL,
                     end INTEGER NOT NULL, text TEXT NOT NULL, heading TEXT NOT NULL,
                     page_start INTEGER, page_end INTEGER);
CREATE VIRTUAL TABLE chunks_fts USING fts5(heading, text, content='chunks', content_rowid='key',
                                           tokenize="{TOKENIZE}");
"""


def write_store(path: Path, chunks: list[Chunk]) -> None:
    """One database, written in key order in one transaction, so the same chunks give the
    same bytes."""
    with sqlite3.connect(path) as db:
        db.executescript(SCHEMA)
        db.executemany("INSERT INTO chunks VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                       [(c.key, c.source, c.start, c.end, c.text, c.heading, c.page_start,
                         c.page_end)
                        for c in sorted(chunks, key=lambda c: c.key)])
        db.execute("INSERT INTO chunks_fts(rowid, heading, text) "
                   "SELECT key, heading, text FROM chunks")
        db.execute("INSERT INTO chunks_fts(chunks_fts) VALUES ('optimize')")
    db.close()
    with sqlite3.connect(path) as db:
        db.execute("VACUUM")
    db.close()


def pages(db: sqlite3.Connection, key: int) -> tuple[int | None, int | None]:
    """A chunk's first and last page, (None, None) for a format without pages or a store
    written before the columns existed."""
    columns = {row[1] for row in db.execute("PRAGMA table_info(chunks)")}
    if "page_start" not in columns:
        return None, None
    row = db.execute("SELECT page_start, page_end FROM chunks WHERE key = ?", (key,)).fetchone()
    return (row[0], row[1]) if row else (None, None)
