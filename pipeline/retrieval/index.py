"""The usearch index over every chunk, embedded by the `.pte` the phone will embed queries with.

Its quality is measured where it is built: recall@10 of the HNSW search against exact search
over the fp32-stored vectors (so the storage dtype's loss counts too), and the worst cosine
between the `.pte` and the eager fp32 embedder over the whole corpus.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import numpy as np
from usearch.index import Index, search

from pipeline.config import IndexConfig
from pipeline.errors import BadInput
from pipeline.progress import bar, log
from pipeline.retrieval import keyword
from pipeline.retrieval.corpus import CHUNKS, Chunk, write_chunks
from pipeline.retrieval.embedder import Embedder

INDEX = "index.usearch"
DTYPES = ("f32", "f16", "i8")
K = 10
MAX_QUERIES = 256
# What `run` measures that differs from one build of the same index to the next: run-record
# timings, never manifest notes (the manifest describes bytes).
TIMINGS = ("chunks_per_s", "embed_s", "index_add_s")


def check(cfg: IndexConfig) -> None:
    if cfg.dtype not in DTYPES:
        raise BadInput(f"index.dtype={cfg.dtype!r} is not allowed; choose one of: "
                       f"{', '.join(DTYPES)}.")
    for key in ("connectivity", "expansion_add", "expansion_search"):
        if getattr(cfg, key) < 2:
            raise BadInput(f"index.{key}={getattr(cfg, key)} must be at least 2.")


def embed_with_progress(embedder: Embedder, texts: list[str], desc: str) -> np.ndarray:
    return embedder.embed(bar(texts, desc=desc, total=len(texts), unit="chunk"))


def build(cfg: IndexConfig, vectors: np.ndarray) -> Index:
    check(cfg)
    index = Index(ndim=vectors.shape[1], metric="cos", dtype=cfg.dtype,
                  connectivity=cfg.connectivity, expansion_add=cfg.expansion_add,
                  expansion_search=cfg.expansion_search, multi=False)
    index.add(np.arange(len(vectors), dtype=np.uint64), vectors, threads=1)
    return index


def recall_at_k(index: Index, vectors: np.ndarray, queries: np.ndarray, k: int = K) -> float:
    """Share of the exact top-k (brute force over fp32 vectors) the index's search returns."""
    k = min(k, len(vectors))
    found = index.search(queries, k).keys
    exact = search(vectors, queries, k, metric="cos", exact=True).keys
    hits = [len(set(a.tolist()) & set(e.tolist())) for a, e in zip(found, exact, strict=True)]
    return float(np.sum(hits) / (k * len(queries)))


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Worst row-wise cosine between two sets of embeddings of the same texts."""
    dots = np.sum(a * b, axis=1)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return float(np.min(dots / np.maximum(norms, 1e-12)))


def held_out_queries(documents: list[str], limit: int = MAX_QUERIES) -> list[str]:
    """Sentences of held-out documents, evenly spread: a query's length, never a chunk verbatim."""
    sentences = [s for text in documents
                 for s in re.split(r"(?<=[.?!])\s+", " ".join(text.split()))
                 if 20 <= len(s) <= 300]
    return sentences[::max(1, len(sentences) // limit)][:limit]


def run(cfg: IndexConfig, chunks: list[Chunk], pte: Embedder, reference: Embedder,
        query_texts: list[str], out: Path) -> dict[str, Any]:
    """Embed, index and measure; writes `index.usearch`, `chunks.jsonl` and the keyword store
    `chunks.sqlite` into `out`."""
    check(cfg)
    if not query_texts:
        raise BadInput("no held-out queries: the evaluation split has no usable sentence.")
    started = time.monotonic()
    vectors = embed_with_progress(pte, [c.text for c in chunks], "embedding (.pte)")
    embedded = time.monotonic()
    index = build(cfg, vectors)
    index.save(str(out / INDEX))
    write_chunks(out / CHUNKS, chunks)
    keyword.write_store(out / keyword.STORE, chunks)
    built = time.monotonic()
    log("embedding the corpus in fp32 eager for parity")
    fp32 = embed_with_progress(reference, [c.text for c in chunks], "embedding (fp32)")
    queries = pte.embed(query_texts)
    return {
        "chunks": len(chunks),
        "queries": len(queries),
        "recall_at_10": recall_at_k(index, vectors, queries),
        "embed_cosine_min": min_cosine(vectors, fp32),
        "chunks_per_s": round(len(chunks) / (embedded - started), 1),
        "embed_s": round(embedded - started, 2),
        "index_add_s": round(built - embedded, 2),
        "index_bytes": (out / INDEX).stat().st_size,
        "keyword_store_bytes": (out / keyword.STORE).stat().st_size,
    }
