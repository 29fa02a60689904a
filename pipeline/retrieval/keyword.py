"""The keyword side of retrieval: the chunks in a SQLite database with an FTS5 index.

A phone reads it natively (Android and iOS ship SQLite with FTS5), and it holds each chunk's
text, heading path, source and character offsets, so an app needs the `.pte`s, `index.usearch`
and this one file. Headings and text are both searched. Keys are the usearch keys. The
tokenizer keeps `_` inside words, so code identifiers (`add_subdirectory`, `__init__`) are
single terms; a dotted name (`os.path.join`) is its parts.
Queries and ranking live with the on-device loop (`pipeline/device/retrieve.py`).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from pipeline.retrieval.corpus import Chunk

TOKENIZE = "unicode61 tokenchars '_'"
SCHEMA = f"""
CREATE TABLE chunks (key INTEGER PRIMARY KEY, source TEXT NOT NULL, start INTEGER NOT NULL,
                     end INTEGER NOT NULL, text TEXT NOT NULL, heading TEXT NOT NULL);
CREATE VIRTUAL TABLE chunks_fts USING fts5(heading, text, content='chunks', content_rowid='key',
                                           tokenize="{TOKENIZE}");
"""


def write_store(path: Path, chunks: list[Chunk]) -> None:
    """One database, written in key order in one transaction, so the same chunks give the
    same bytes."""
    with sqlite3.connect(path) as db:
        db.executescript(SCHEMA)
        db.executemany("INSERT INTO chunks VALUES (?, ?, ?, ?, ?, ?)",
                       [(c.key, c.source, c.start, c.end, c.text, c.heading)
                        for c in sorted(chunks, key=lambda c: c.key)])
        db.execute("INSERT INTO chunks_fts(rowid, heading, text) "
                   "SELECT key, heading, text FROM chunks")
        db.execute("INSERT INTO chunks_fts(chunks_fts) VALUES ('optimize')")
    db.close()
    with sqlite3.connect(path) as db:
        db.execute("VACUUM")
    db.close()
