"""Chunk embeddings kept by content, so a corpus change embeds only the chunks it changed.

A store is one SQLite file per embedder (named by the sha256 of the embedder artifact's files:
the `.pte` and the tokenizer that truncates for it), holding `sha256(text) -> float32 vector`.
The `.pte` embeds one text per call, so a vector does not depend on what was embedded beside it:
a vector read back is the vector a clean build computes, and the index built from it has the
same bytes. It lives outside the workspace (beside the wheel cache, `EDGERAG_CACHE`), because
DVC clears a stage's outputs before it runs; being content-addressed it can never be stale,
only missing. Each batch commits as it is embedded, so an interrupted build resumes.

Every row carries a digest of its text key and vector bytes, checked on every read: a row that
does not match (a flipped byte, a torn write, a row from another store) is not trusted but
embedded again and replaced, and the build's run record counts it (`store_rejected`).

The store also remembers, per workspace, the keys of its last index, so a build can say how many
chunks left the corpus since (`removed`).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np

from pipeline import sources

SCHEMA = """
CREATE TABLE IF NOT EXISTS vectors (text_sha BLOB PRIMARY KEY, vector BLOB NOT NULL,
                                    digest BLOB);
CREATE TABLE IF NOT EXISTS last_build (workspace TEXT PRIMARY KEY, keys BLOB NOT NULL);
"""
BATCH = 256  # texts embedded between commits: what an interruption can lose


def text_sha(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8")).digest()


def row_digest(sha: bytes, vector: bytes) -> bytes:
    return hashlib.sha256(sha + vector).digest()


def embedder_identity(files: dict[str, dict]) -> str:
    """The sha256 of an embedder artifact's file table (name -> sha256 and size)."""
    table = {name: entry["sha256"] for name, entry in sorted(files.items())}
    return hashlib.sha256(json.dumps(table, sort_keys=True).encode()).hexdigest()


def store_path(identity: str) -> Path:
    return sources.cache_dir() / "vectors" / f"{identity}.sqlite"


class VectorStore:
    def __init__(self, path: Path, dim: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path, self.dim = path, dim
        self.db = sqlite3.connect(path, timeout=600)  # sweep jobs may share one store
        self.db.executescript(SCHEMA)
        columns = {row[1] for row in self.db.execute("PRAGMA table_info(vectors)")}
        if "digest" not in columns:  # a store from before digests: its rows are re-embedded
            with self.db:
                self.db.execute("ALTER TABLE vectors ADD COLUMN digest BLOB")
        self.rejected = 0  # rows read back whose digest did not match: embedded again

    def close(self) -> None:
        self.db.close()

    def lookup(self, shas: list[bytes]) -> dict[bytes, np.ndarray]:
        found: dict[bytes, np.ndarray] = {}
        unique = list(dict.fromkeys(shas))
        for start in range(0, len(unique), 500):  # SQLite's bound-parameter limit
            part = unique[start:start + 500]
            rows = self.db.execute(
                f"SELECT text_sha, vector, digest FROM vectors WHERE text_sha IN "
                f"({','.join('?' * len(part))})", part).fetchall()
            for sha, blob, digest in rows:
                if len(blob) == 4 * self.dim and digest == row_digest(sha, blob):
                    found[sha] = np.frombuffer(blob, np.float32)
                else:
                    self.rejected += 1
        return found

    def fill(self, items: Iterable[tuple[bytes, str]],
             embed: Callable[[list[str]], np.ndarray]) -> None:
        """Embed (sha, text) pairs and store them, one committed batch at a time."""
        for batch in _batches(items, BATCH):
            vectors = embed([text for _, text in batch]).astype(np.float32)
            with self.db:
                self.db.executemany("INSERT OR REPLACE INTO vectors VALUES (?, ?, ?)",
                                    [(sha, vec.tobytes(), row_digest(sha, vec.tobytes()))
                                     for (sha, _), vec in zip(batch, vectors, strict=True)])

    def previous_keys(self, workspace: str) -> set[int] | None:
        row = self.db.execute("SELECT keys FROM last_build WHERE workspace = ?",
                              (workspace,)).fetchone()
        return None if row is None else set(np.frombuffer(row[0], np.int64).tolist())

    def remember_keys(self, workspace: str, keys: list[int]) -> None:
        with self.db:
            self.db.execute("INSERT OR REPLACE INTO last_build VALUES (?, ?)",
                            (workspace, np.asarray(sorted(keys), np.int64).tobytes()))


def _batches(items: Iterable, size: int) -> Iterator[list]:
    iterator = iter(items)
    while batch := list(itertools.islice(iterator, size)):
        yield batch
