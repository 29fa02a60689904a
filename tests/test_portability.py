"""A release's files open beyond Python: Node's usearch and SQLite bindings (what a JavaScript or
React Native app links) find the same top-k keys and keyword hits as edgerag's own query code.

The Node packages are pinned in tests/node/package-lock.json and installed by `make test`
(`npm ci`); without Node and them, the test skips and says why.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from usearch.index import Index

from pipeline import layout
from pipeline.config import CorpusConfig, IndexConfig, RetrievalConfig
from pipeline.device import retrieve
from pipeline.retrieval import corpus, embedder, index, keyword

NODE_DIR = Path(__file__).parent / "node"
QUESTIONS = ["How do I leave a loop early?", "What does __init__ do?",
             "while loop condition", "When is the else clause of a for loop run?"]


def _node_or_skip() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.skip("Node is not installed, so the release's portability to it is not checked.")
    if not (NODE_DIR / "node_modules" / "usearch").is_dir():
        pytest.skip("tests/node has no node_modules: `make test` installs them with npm ci.")
    return node


@pytest.mark.parametrize("dtype", ["f16", "i8"])
def test_node_finds_the_same_keys_as_python(dtype, tiny_embedder, tiny_embedder_source,
                                            tmp_path):
    node = _node_or_skip()
    compiled, _ = tiny_embedder
    docs = [d for d in corpus.pydoc_documents() if d.source in
            {"pydoc:break", "pydoc:for", "pydoc:while", "pydoc:customization", "pydoc:if"}]
    cut = CorpusConfig(chunk_tokens=48, overlap_tokens=8, chunking="sections")
    chunks = corpus.chunk_corpus(docs, cut, tiny_embedder_source / layout.TOKENIZER, 64)
    pte = embedder.load_pte(compiled)
    built = index.build(IndexConfig(dtype=dtype), pte.embed(
        [corpus.embedding_text(c) for c in chunks]), np.array([c.key for c in chunks], np.uint64))
    built.expansion_search = 96
    built.save(str(tmp_path / layout.INDEX_FILE))
    settings = index.search_settings(built, IndexConfig(dtype=dtype))
    keyword.write_store(tmp_path / layout.STORE, chunks)
    assert max(c.key for c in chunks) > 2**53, "keys beyond JavaScript's safe integers"

    queries = pte.embed(QUESTIONS)
    k = 5
    python_index = Index.restore(str(tmp_path / layout.INDEX_FILE), view=True)
    python_index.expansion_search = settings["expansion_search"]
    dense = [[str(key) for key in python_index.search(q, k).keys] for q in queries]
    db = retrieve.Retriever(python_index, tmp_path / layout.STORE, pte,
                            RetrievalConfig()).db
    matches = [retrieve.match_query(q) for q in QUESTIONS]
    found = [[str(key) for key in retrieve.keyword_search(db, q, k)] for q in QUESTIONS]
    assert all(found), "every question has keyword hits to compare"

    job = {"index": str(tmp_path / layout.INDEX_FILE), "settings": settings,
           "store": str(tmp_path / layout.STORE), "vectors": queries.tolist(), "k": k,
           "matches": matches}
    done = subprocess.run([node, str(NODE_DIR / "portability.js")], input=json.dumps(job),
                          capture_output=True, text=True, cwd=NODE_DIR, timeout=120)
    assert done.returncode == 0, done.stderr
    node_found = json.loads(done.stdout)
    assert node_found == {"size": len(chunks), "dense": dense, "keyword": found}
