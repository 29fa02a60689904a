"""The usearch index over every chunk, embedded by the `.pte` the phone will embed queries with.

Vectors come from a content-keyed store (`vectors.py`), so a rebuild embeds only new or changed
chunk texts; the index is always assembled whole from them in key order, so it has the bytes a
clean build has. Its quality is measured where it is built: recall@10 of the HNSW search against
exact search over the fp32-stored vectors (so the storage dtype's loss counts too), and the worst
cosine between the `.pte` and the eager fp32 embedder on a fixed sample of chunks.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from usearch.index import Index, search

from pipeline import layout
from pipeline.config import IndexConfig
from pipeline.errors import BadInput
from pipeline.progress import bar, log
from pipeline.retrieval import keyword
from pipeline.retrieval.corpus import Chunk, embedding_text, write_chunks
from pipeline.retrieval.embedder import Embedder
from pipeline.retrieval.vectors import VectorStore, text_sha

MAX_EXPANSION = 4096
DTYPES = ("f32", "f16", "i8")
K = 10
MAX_QUERIES = 256
# Queries per brute-force pass: usearch's exact search holds about 12 bytes per query and vector
# (1,000 queries over 1M vectors: 12 GB).
EXACT_BATCH = 64
PARITY_CHUNKS = 256  # chunks embedded again in fp32 eager to bound the `.pte`'s error
# What `run` measures that differs from one build of the same index to the next (timings, and
# what the vector store already held): run-record facts, never manifest notes (the manifest
# describes bytes).
RUN_FACTS = ("embedded", "reused", "store_rejected", "removed", "chunks_per_s", "embed_s",
             "index_add_s")


def check(cfg: IndexConfig) -> None:
    if cfg.dtype not in DTYPES:
        raise BadInput(f"index.dtype={cfg.dtype!r} is not allowed; choose one of: "
                       f"{', '.join(DTYPES)}.")
    for key in ("connectivity", "expansion_add", "expansion_search"):
        if getattr(cfg, key) < 2:
            raise BadInput(f"index.{key}={getattr(cfg, key)} must be at least 2.")
    if not 0 < cfg.min_recall_at_10 <= 1:
        raise BadInput(f"index.min_recall_at_10={cfg.min_recall_at_10} must be in (0, 1].")


def build(cfg: IndexConfig, vectors: np.ndarray, keys: np.ndarray | None = None) -> Index:
    """An index of `vectors` under `keys` (default 0…N-1), added in key order: the graph depends
    on insertion order, so the same keyed vectors always give the same bytes."""
    check(cfg)
    keys = np.arange(len(vectors), dtype=np.uint64) if keys is None else keys.astype(np.uint64)
    order = np.argsort(keys, kind="stable")
    index = Index(ndim=vectors.shape[1], metric="cos", dtype=cfg.dtype,
                  connectivity=cfg.connectivity, expansion_add=cfg.expansion_add,
                  expansion_search=cfg.expansion_search, multi=False)
    index.add(keys[order], vectors[order], threads=1)
    return index


def recall_at_k(index: Index, vectors: np.ndarray, queries: np.ndarray, k: int = K,
                keys: np.ndarray | None = None) -> float:
    """Share of the exact top-k (brute force over fp32 vectors, row i keyed `keys[i]`) the
    index's search returns."""
    k = min(k, len(vectors))
    # usearch answers a batch of one with one row, not a batch: both made 2-D
    found = np.atleast_2d(index.search(queries, k).keys)
    exact = np.concatenate([
        np.atleast_2d(search(vectors, queries[i:i + EXACT_BATCH], k, metric="cos",
                             exact=True).keys) for i in range(0, len(queries), EXACT_BATCH)])
    if keys is not None:
        exact = keys.astype(np.uint64)[exact]
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


def embed_chunks(chunks: list[Chunk], embed: Callable[[list[str]], np.ndarray], dim: int,
                 store: VectorStore) -> tuple[np.ndarray, int]:
    """Every chunk's vector, row for row, embedding only texts the store lacks; and how many
    texts were embedded."""
    texts = [embedding_text(c) for c in chunks]
    shas = [text_sha(t) for t in texts]
    have = store.lookup(shas)
    missing = {sha: t for sha, t in zip(shas, texts, strict=True) if sha not in have}
    if missing:
        store.fill(bar(missing.items(), desc="embedding (.pte)", total=len(missing),
                       unit="chunk"), embed)
        have.update(store.lookup(list(missing)))
    return np.stack([have[sha] for sha in shas]) if shas else np.zeros((0, dim)), len(missing)


def split_queries(queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Held-out queries in two halves, alternating: the first sets the search breadth, the
    second reports recall, so the reported figure is not the one the breadth was tuned on."""
    return queries[0::2], queries[1::2]


def widen_search(index: Index, matrix: np.ndarray, keys: np.ndarray, probes: np.ndarray,
                 cfg: IndexConfig) -> int:
    """The narrowest search breadth, from `cfg.expansion_search` doubling up to MAX_EXPANSION,
    whose recall@10 on `probes` reaches `cfg.min_recall_at_10`; left set on `index`. Probes must
    look like queries: the index's own vectors find themselves at any breadth (on 19,514 AWS CLI
    chunks they held 0.9996 at 64, where held-out sentences got 0.79 and needed 1,024)."""
    expansion = cfg.expansion_search
    while True:
        index.expansion_search = expansion
        recall = recall_at_k(index, matrix, probes, keys=keys)
        if recall >= cfg.min_recall_at_10:
            return expansion
        if expansion >= MAX_EXPANSION:
            log(f"recall@10 is {recall:.3f} at the widest search breadth ({MAX_EXPANSION}), below "
                f"index.min_recall_at_10 {cfg.min_recall_at_10}: the graph is too sparse for "
                "this corpus; the release rule's min_recall_at_10 gates what ships")
            return expansion
        expansion = min(2 * expansion, MAX_EXPANSION)


def search_settings(index: Index, cfg: IndexConfig) -> dict[str, Any]:
    """What a reader must set to search as the build measured (usearch's file keeps the graph,
    not the search breadth): shipped as `index.json`."""
    return {"ndim": index.ndim, "metric": "cos", "dtype": cfg.dtype, "count": len(index),
            "connectivity": cfg.connectivity, "expansion_add": cfg.expansion_add,
            "expansion_search": index.expansion_search}


def parity_sample(chunks: list[Chunk], n: int = PARITY_CHUNKS) -> list[Chunk]:
    """The `n` chunks with the smallest keys: a spread (keys are hashes) that does not move
    when other chunks change."""
    return sorted(chunks, key=lambda c: c.key)[:n]


def run(cfg: IndexConfig, chunks: list[Chunk], pte: Embedder, reference: Embedder,
        query_texts: list[str], out: Path, store: VectorStore, workspace: str,
        embed: Callable[[list[str]], np.ndarray] | None = None) -> dict[str, Any]:
    """Embed (what the store lacks; through `embed`, by default `pte.embed`), index and measure;
    writes `index.usearch`, `index.json`, `chunks.jsonl` and the keyword store `chunks.sqlite`
    into `out`."""
    check(cfg)
    if len(query_texts) < 2:
        raise BadInput(f"{len(query_texts)} held-out queries: the evaluation split needs at least "
                       "two usable sentences (one half sets the search breadth, the other "
                       "reports recall).")
    started = time.monotonic()
    matrix, embedded = embed_chunks(chunks, embed or pte.embed, pte.dim, store)
    finished = time.monotonic()
    keys = np.array([c.key for c in chunks], dtype=np.uint64)
    index = build(cfg, matrix, keys)
    sample = parity_sample(chunks)
    rows = {c.key: i for i, c in enumerate(chunks)}
    queries = pte.embed(query_texts)
    breadth_queries, recall_queries = split_queries(queries)
    expansion = widen_search(index, matrix, keys, breadth_queries, cfg)
    index.save(str(out / layout.INDEX_FILE))
    settings = search_settings(index, cfg)
    (out / layout.INDEX_META).write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n")
    write_chunks(out / layout.CHUNKS, chunks)
    keyword.write_store(out / layout.STORE, chunks)
    built = time.monotonic()
    previous = store.previous_keys(workspace)
    store.remember_keys(workspace, [c.key for c in chunks])
    log(f"embedding {len(sample)} chunks in fp32 eager for parity")
    fp32 = reference.embed([embedding_text(c) for c in sample])
    return {
        "chunks": len(chunks),
        "queries": len(recall_queries),
        "breadth_queries": len(breadth_queries),
        "recall_at_10": recall_at_k(index, matrix, recall_queries, keys=keys),
        "expansion_search": expansion,
        "embed_cosine_min": min_cosine(matrix[[rows[c.key] for c in sample]], fp32),
        "parity_chunks": len(sample),
        "index_bytes": (out / layout.INDEX_FILE).stat().st_size,
        "keyword_store_bytes": (out / layout.STORE).stat().st_size,
        "embedded": embedded,
        "reused": len(chunks) - embedded,
        "store_rejected": store.rejected,
        "removed": None if previous is None else len(previous - set(rows)),
        "chunks_per_s": round(embedded / (finished - started), 1) if embedded else None,
        "embed_s": round(finished - started, 2),
        "index_add_s": round(built - finished, 2),
    }
