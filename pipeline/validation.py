"""Every section of a config checked before any work starts.

`edgerag configure` and `edgerag sweep` (before its first job) call `check`, so a bad index,
embedder, corpus, retrieval or RAG-evaluation value fails there in one sentence instead of in its
stage after the LLM stages have spent many minutes. The rules live with the modules that own the
allowed values; this only calls them. (`params_file.validate` checks the schema, the eval minimums
and the LLM sections.)
"""

from __future__ import annotations

from pipeline.config import Config
from pipeline.errors import BadInput


def check(cfg: Config) -> None:
    from pipeline.device import retrieve
    from pipeline.evaluation import rag
    from pipeline.retrieval import corpus, embedder, index, reranker

    embedder.check(cfg.embedder)
    reranker.check(cfg.reranker)
    if cfg.retrieval.rerank and not reranker.enabled(cfg.reranker):
        raise BadInput("retrieval.rerank=true needs a reranker: choose one with reranker=… "
                       "(conf/reranker/).")
    corpus.check(cfg.corpus)
    index.check(cfg.index)
    retrieve.check(cfg.retrieval)
    rag.check(cfg.rag_eval)
