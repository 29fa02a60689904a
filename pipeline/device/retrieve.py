"""Query time retrieval, as a phone app mirrors it: dense, keyword, or both fused.

- dense: the question's embedding (the embedder `.pte`) against `index.usearch`;
- keyword: the question's words against `chunks.sqlite`'s FTS5 table, ranked by BM25;
- hybrid: reciprocal-rank fusion of the two lists, each cut to `candidates`:
  score(chunk) = dense_weight / (rrf_k + dense rank) + keyword_weight / (rrf_k + keyword rank),
  ranks counted from 1, a list that misses the chunk adding nothing; ties go to the lower key.

With `retrieval.rerank`, the fused top `rerank_candidates` are then rescored by the cross-encoder
`.pte` (the question paired with each chunk's heading and text, as `chunks.sqlite` holds them)
and put in order of its logit, ties to the lower key; the rest keep their fused order behind
them. The scores returned are then the reranker's logits for those, the fused score for the rest.
"""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.config import RetrievalConfig
from pipeline.errors import BadInput

MODES = ("dense", "keyword", "hybrid")
_TERM = re.compile(r"[A-Za-z0-9_]+")
# Words that say how a question is asked, not what it is about.
STOPWORDS = frozenset("""a an and are as at be by can do does for from how i if in is it its my
of on or so that the this to use what when where which who why will with would you your me
there their them they we our about into""".split())


def check(cfg: RetrievalConfig) -> None:
    if cfg.mode not in MODES:
        raise BadInput(f"retrieval.mode={cfg.mode!r} is not allowed; choose one of: "
                       f"{', '.join(MODES)}.")
    if cfg.k < 1:
        raise BadInput(f"retrieval.k={cfg.k} must be at least 1.")
    if cfg.prompt_chunks < 1:
        raise BadInput(f"retrieval.prompt_chunks={cfg.prompt_chunks} must be at least 1.")
    if cfg.candidates < cfg.k:
        raise BadInput(f"retrieval.k={cfg.k} is above retrieval.candidates={cfg.candidates}, "
                       "the lists it is fused from; raise candidates or lower k.")
    if cfg.rrf_k < 0:
        raise BadInput(f"retrieval.rrf_k={cfg.rrf_k} must be at least 0.")
    if cfg.dense_weight < 0 or cfg.keyword_weight < 0:
        raise BadInput("retrieval.dense_weight and retrieval.keyword_weight must be ≥ 0.")
    if cfg.rerank_candidates < 1:
        raise BadInput(f"retrieval.rerank_candidates={cfg.rerank_candidates} must be at least 1.")


def match_query(question: str) -> str | None:
    """The question's content words as an FTS5 query (any of them; BM25 weighs them)."""
    terms = sorted({t.lower() for t in _TERM.findall(question)} - STOPWORDS)
    return " OR ".join(f'"{term}"' for term in terms) or None


def keyword_search(db: sqlite3.Connection, question: str, n: int) -> list[int]:
    query = match_query(question)
    if query is None:
        return []
    rows = db.execute("SELECT rowid FROM chunks_fts WHERE chunks_fts MATCH ? "
                      "ORDER BY bm25(chunks_fts), rowid LIMIT ?", (query, n)).fetchall()
    return [int(row[0]) for row in rows]


def fuse(dense: list[int], keyword: list[int], cfg: RetrievalConfig) -> list[tuple[int, float]]:
    """Reciprocal-rank fusion of two ranked key lists (see the module docstring)."""
    scores: dict[int, float] = {}
    for ranked, weight in ((dense, cfg.dense_weight), (keyword, cfg.keyword_weight)):
        for rank, key in enumerate(ranked[: cfg.candidates], start=1):
            scores[key] = scores.get(key, 0.0) + weight / (cfg.rrf_k + rank)
    ranked = sorted(scores.items(), key=lambda item: (-item[1], item[0]))
    return [(key, score) for key, score in ranked if score > 0]


@dataclass
class Retriever:
    """The two indexes of a release (or a build) and the embedder that queries the dense one."""

    index: Any
    store: Path
    embedder: Any
    cfg: RetrievalConfig
    reranker: Any = None  # a `reranker.Reranker`, used when `cfg.rerank`

    def __post_init__(self) -> None:
        check(self.cfg)
        # Read-only and immutable: the store is a shipped file, never written at query time.
        self.db = sqlite3.connect(f"file:{self.store}?mode=ro&immutable=1", uri=True)
        self._query: tuple[str | None, Any] = (None, None)

    def query_vector(self, question: str) -> Any:
        """The question's embedding, computed once per question: retrieval, the evidence
        quotes and the abstention signals of one `ask` all need it."""
        if self._query[0] != question:
            self._query = (question, self.embedder.embed([question])[0])
        return self._query[1]

    def dense(self, question: str, n: int) -> list[int]:
        matches = self.index.search(self.query_vector(question), n)
        return [int(key) for key in matches.keys]

    def search(self, question: str, k: int | None = None,
               rerank: bool | None = None) -> list[tuple[int, float]]:
        """The top `k` (default `cfg.k`) keys with their fused (or single-list) scores, reranked
        if `rerank` (default `cfg.rerank`)."""
        k = k or self.cfg.k
        n = max(self.cfg.candidates, k)
        dense = self.dense(question, n) if self.cfg.mode != "keyword" else []
        keyword = keyword_search(self.db, question, n) if self.cfg.mode != "dense" else []
        fused = fuse(dense, keyword, self.cfg)
        if rerank is None:
            rerank = self.cfg.rerank
        if rerank:
            fused = self.rerank(question, fused)
        return fused[:k]

    def passage(self, key: int) -> str:
        """What the reranker reads of a chunk: its heading path, if any, then its text."""
        heading, text = self.db.execute("SELECT heading, text FROM chunks WHERE key = ?",
                                        (key,)).fetchone()
        return f"{heading}\n{text}" if heading else text

    def rerank(self, question: str, fused: list[tuple[int, float]]) -> list[tuple[int, float]]:
        if self.reranker is None:
            raise BadInput("retrieval.rerank=true, but this build or release has no reranker.")
        head = fused[: self.cfg.rerank_candidates]
        scores = self.reranker.score(question, [self.passage(key) for key, _ in head])
        rescored = sorted(((key, score) for (key, _), score in zip(head, scores, strict=True)),
                          key=lambda item: (-item[1], item[0]))
        return rescored + fused[len(head):]
