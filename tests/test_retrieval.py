"""Retrieval: chunking with exact offsets, messy folders, `.pte` parity with fp32, index recall."""

from __future__ import annotations

import dataclasses
import os
import zlib

import numpy as np
import pytest
from tokenizers import Tokenizer

from pipeline import layout
from pipeline.config import CorpusConfig, IndexConfig
from pipeline.errors import BadInput
from pipeline.retrieval import corpus, embedder, index, sections, vectors

SENTENCES = [
    "The for statement iterates over the elements of a sequence.",
    "A lambda expression creates an anonymous function.",
    "Bananas are rich in potassium and easy to carry.",
    "Exceptions are raised with the raise statement.",
    "",
    "a much longer text than the embedder's window " * 20,
]


@pytest.fixture(scope="session")
def model_dir(tiny_embedder_source):
    return tiny_embedder_source


@pytest.fixture(scope="session")
def compiled(tiny_embedder):
    return tiny_embedder


@pytest.fixture(scope="session")
def pydoc_docs():
    return corpus.pydoc_documents()


def _chunks(tiny_cfg, model_dir, docs, chunking=None):
    cfg = dataclasses.replace(tiny_cfg.corpus, chunking=chunking or tiny_cfg.corpus.chunking)
    return corpus.chunk_corpus(docs, cfg, model_dir / layout.TOKENIZER,
                               tiny_cfg.embedder.max_seq_len)


def test_chunks_map_back_to_the_exact_text_and_fit_the_window(tiny_cfg, model_dir, pydoc_docs):
    docs = pydoc_docs[:8]
    chunks = _chunks(tiny_cfg, model_dir, docs, chunking="tokens")
    texts = {d.source: d.text for d in docs}
    tokenizer = Tokenizer.from_file(str(model_dir / layout.TOKENIZER))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    assert [c.key for c in chunks] == [
        corpus.chunk_key(c.source, c.text, 0) for c in chunks], "keys are the chunks' content"
    for chunk in chunks:
        assert texts[chunk.source][chunk.start:chunk.end] == chunk.text
        tokens = len(tokenizer.encode(chunk.text, add_special_tokens=False).ids)
        assert 0 < tokens <= tiny_cfg.corpus.chunk_tokens
    for before, after in zip(chunks, chunks[1:], strict=False):
        if before.source == after.source:
            assert before.start < after.start <= before.end, "neighbours overlap, no gaps"
    last = {c.source: c.end for c in chunks}
    assert all(last[s] == len(texts[s].rstrip()) for s in texts), "each document read to its end"


def test_chunk_size_beyond_the_embedder_window_is_bad_input(tiny_cfg, model_dir, pydoc_docs):
    too_big = dataclasses.replace(tiny_cfg.corpus, chunk_tokens=tiny_cfg.embedder.max_seq_len - 1)
    with pytest.raises(BadInput, match="corpus.chunk_tokens=63 must be between 1 and 62"):
        corpus.chunk_corpus(pydoc_docs[:1], too_big, model_dir / layout.TOKENIZER, 64)


def test_messy_folder_skips_and_counts_bad_files(tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "good.md").write_text("# Title\n\nSome *markdown* text.\n")
    (tmp_path / "page.html").write_text(
        "<html><head><style>p {color: red}</style><script>var x = 1;</script></head>"
        "<body><h1>Hello</h1><p>World &amp; friends</p></body></html>")
    (tmp_path / "binary.txt").write_bytes(b"PK\x03\x04\x00\x00binary")
    (tmp_path / "empty.rst").write_text("  \n\n")
    (tmp_path / "latin1.txt").write_bytes("café crème".encode("latin-1"))
    (tmp_path / "script.py").write_text("print('not a document')\n")
    cfg = CorpusConfig(kind="dir", path=str(tmp_path))
    docs, report = corpus.documents(cfg)
    assert report.counts() == {"binary": 1, "empty": 1}
    assert report.other == {".py": 1}
    assert [d.source for d in docs] == ["latin1.txt", "notes/good.md", "page.html"]
    assert docs[0].text == "café crème", "Latin-1 is read, not skipped"
    assert docs[2].text == "# Hello\nWorld & friends", "an HTML heading reads as Markdown's"


RST = """The "if" statement
******************

The "if" statement is used for conditional execution.

   if_stmt ::= "if" expression ":" suite

Elif clauses
============

Each elif is tried in turn.

A second paragraph here.

=======
Notes
=======

Overlined titles are a style of their own.
"""

MARKDOWN = """Intro before any heading.

# Build

Run it.

```sh
make

make test
```

## Options
Setext title
------------

Body under setext.

# Other
Last words.
"""


def test_sections_read_headings_and_paragraph_spans():
    blocks = sections.blocks(RST, sections.style_of("pydoc:if"))
    got = [(b.path, RST[b.start:b.end]) for b in blocks]
    assert got == [
        (('The "if" statement',), 'The "if" statement is used for conditional execution.'),
        (('The "if" statement',), '   if_stmt ::= "if" expression ":" suite'),
        (('The "if" statement', "Elif clauses"), "Each elif is tried in turn."),
        (('The "if" statement', "Elif clauses"), "A second paragraph here."),
        (('The "if" statement', "Elif clauses", "Notes"),
         "Overlined titles are a style of their own."),
    ]
    blocks = sections.blocks(MARKDOWN, sections.style_of("guide/README.md"))
    got = [(b.path, MARKDOWN[b.start:b.end]) for b in blocks]
    assert got == [
        ((), "Intro before any heading."),
        (("Build",), "Run it."),
        (("Build",), "```sh\nmake\n\nmake test\n```"),  # a fence is one paragraph
        (("Build", "Setext title"), "Body under setext."),
        (("Other",), "Last words."),
    ]
    assert [b.path for b in sections.blocks(MARKDOWN, "plain")] == [()] * 8


def test_section_chunks_follow_headings_and_carry_their_path(model_dir):
    tokenizer = Tokenizer.from_file(str(model_dir / layout.TOKENIZER))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    long_paragraph = " ".join(f"word{i}" for i in range(120))
    doc = corpus.Document("guide.md", MARKDOWN + "\n## Long\n\n" + long_paragraph + "\n")
    cfg = CorpusConfig(kind="dir", path="/", chunk_tokens=40, overlap_tokens=8,
                       chunking="sections")
    chunks = corpus.chunk_corpus([doc], cfg, model_dir / layout.TOKENIZER, 64)
    assert [c.heading for c in chunks[:4]] == [
        "guide.md", "guide.md › Build", "guide.md › Build › Setext title", "guide.md › Other"]
    assert chunks[1].text == "Run it.\n\n```sh\nmake\n\nmake test\n```", "paragraphs packed"
    assert {c.heading for c in chunks[4:]} == {"guide.md › Other › Long"} and len(chunks) > 6
    for c in chunks:
        assert doc.text[c.start:c.end] == c.text and c.embeds_heading
        assert corpus.embedding_text(c) == f"{c.heading}\n{c.text}"
        assert len(tokenizer.encode(corpus.embedding_text(c), add_special_tokens=False).ids) <= 40
    plain = corpus.chunk_corpus([doc], dataclasses.replace(cfg, heading_in_text=False),
                                model_dir / layout.TOKENIZER, 64)
    assert plain[0].heading == "guide.md" and corpus.embedding_text(plain[0]) == plain[0].text
    assert plain[0].key != chunks[0].key, "what the embedder saw is part of the key"
    with pytest.raises(BadInput, match="corpus.chunking='pages' is not allowed"):
        corpus.check(dataclasses.replace(cfg, chunking="pages"))


def test_section_chunks_cover_every_paragraph_of_the_reference(tiny_cfg, model_dir, pydoc_docs):
    tokenizer = Tokenizer.from_file(str(model_dir / layout.TOKENIZER))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    docs = pydoc_docs[:30]
    chunks = _chunks(tiny_cfg, model_dir, docs, chunking="sections")
    for doc in docs:
        mine = [c for c in chunks if c.source == doc.source]
        covered = set()
        for c in mine:
            assert doc.text[c.start:c.end] == c.text and c.heading.startswith(doc.source)
            covered.update(range(c.start, c.end))
            embedded = corpus.embedding_text(c)
            assert len(tokenizer.encode(embedded, add_special_tokens=False).ids) <= 48
        for block in sections.blocks(doc.text, "rst"):
            text = {i for i in range(block.start, block.end) if not doc.text[i].isspace()}
            assert text <= covered, f"{doc.source} lost a paragraph at {block.start}"


def test_empty_or_missing_folder_is_bad_input(tmp_path):
    with pytest.raises(BadInput, match="has no readable documents"):
        corpus.documents(CorpusConfig(kind="dir", path=str(tmp_path)))
    with pytest.raises(BadInput, match="is not a folder"):
        corpus.documents(CorpusConfig(kind="dir", path=str(tmp_path / "nope")))


def test_chunking_is_deterministic(tiny_cfg, model_dir, pydoc_docs, tmp_path):
    paths = [tmp_path / "a.jsonl", tmp_path / "b.jsonl"]
    for path in paths:
        corpus.write_chunks(path, _chunks(tiny_cfg, model_dir, corpus.pydoc_documents()[:20]))
    assert paths[0].read_bytes() == paths[1].read_bytes()
    assert corpus.read_chunks(paths[0]) == _chunks(tiny_cfg, model_dir, pydoc_docs[:20])


def test_pte_embeddings_match_fp32(compiled, model_dir):
    out, notes = compiled
    pte = embedder.load_pte(out).embed(SENTENCES)
    fp32 = embedder.load_reference(model_dir, out).embed(SENTENCES)
    assert pte.shape == (len(SENTENCES), 384) == (len(SENTENCES), notes["dim"])
    assert np.allclose(np.linalg.norm(pte, axis=1), 1.0, atol=1e-4)
    assert index.min_cosine(pte, fp32) >= 0.999
    similarity = pte @ pte.T
    assert similarity[0, 1] > similarity[0, 2], "two Python sentences are nearer than a banana"


def test_bad_embedder_and_index_settings_are_bad_input(tiny_cfg):
    with pytest.raises(BadInput, match="embedder.quantize='int3'"):
        embedder.check(dataclasses.replace(tiny_cfg.embedder, quantize="int3"))
    with pytest.raises(BadInput, match="index.dtype='f64' is not allowed"):
        index.check(IndexConfig(dtype="f64"))


def test_index_recall_and_parity_on_a_tiny_corpus(tiny_cfg, compiled, model_dir, pydoc_docs,
                                                  tmp_path):
    out, _ = compiled
    chunks = _chunks(tiny_cfg, model_dir, pydoc_docs[:3])[:60]
    queries = index.held_out_queries([d.text for d in pydoc_docs[40:]], limit=24)
    pte = embedder.load_pte(out)
    store = vectors.VectorStore(tmp_path / "vectors.sqlite", pte.dim)
    notes = index.run(IndexConfig(), chunks, pte, embedder.load_reference(model_dir, out),
                      queries, tmp_path, store, "here")
    assert notes["chunks"] == len(chunks) > 20
    assert notes["breadth_queries"] == notes["queries"] == 12, "half tunes, half reports"
    assert notes["recall_at_10"] >= 0.99
    assert notes["embed_cosine_min"] >= 0.999
    assert corpus.read_chunks(tmp_path / layout.CHUNKS) == chunks
    from usearch.index import Index

    restored = Index.restore(str(tmp_path / layout.INDEX_FILE))
    own = restored.search(pte.embed([chunks[3].text]), 1).keys[0]
    assert int(own) == chunks[3].key, "a chunk's own text finds that chunk first"


class _Counting:
    """The `.pte` embedder, recording every text it was asked to embed."""

    def __init__(self, inner):
        self.inner, self.dim, self.texts = inner, inner.dim, []

    def embed(self, texts):
        texts = list(texts)
        self.texts += texts
        return self.inner.embed(texts)


def _build(tiny_cfg, model_dir, compiled, docs, store, out, pte=None):
    out.mkdir(parents=True)
    chunks = _chunks(tiny_cfg, model_dir, docs)
    pte = pte or embedder.load_pte(compiled[0])
    queries = ["How does a for loop iterate?", "What does assert check?"]
    notes = index.run(IndexConfig(), chunks, pte, embedder.load_reference(model_dir, compiled[0]),
                      queries, out, store, "workspace")
    return chunks, notes


def test_an_edited_document_reembeds_only_its_changed_chunks_and_matches_a_clean_build(
        tiny_cfg, model_dir, compiled, pydoc_docs, tmp_path):
    docs = pydoc_docs[:4]
    store = vectors.VectorStore(tmp_path / "store.sqlite", 384)
    before, _ = _build(tiny_cfg, model_dir, compiled, docs, store, tmp_path / "v1")
    edited = [*docs[:1], corpus.Document(docs[1].source, docs[1].text.replace(
        docs[1].text[-200:], " An edited ending, with words it never had. "))] + docs[2:]
    counting = _Counting(embedder.load_pte(compiled[0]))
    after, notes = _build(tiny_cfg, model_dir, compiled, edited, store, tmp_path / "v2", counting)

    new_texts = ({corpus.embedding_text(c) for c in after}
                 - {corpus.embedding_text(c) for c in before})
    assert 0 < len(new_texts) < len(after) // 3
    assert sorted(counting.texts[:len(new_texts)]) == sorted(new_texts)  # then only queries
    assert (notes["embedded"], notes["reused"]) == (len(new_texts), len(after) - len(new_texts))
    assert notes["removed"] == len({c.key for c in before} - {c.key for c in after}) > 0
    unchanged = [c for c in before if c.source != docs[1].source]
    assert {c.key for c in unchanged} <= {c.key for c in after}, "untouched chunks keep keys"

    clean, _ = _build(tiny_cfg, model_dir, compiled, edited,
                      vectors.VectorStore(tmp_path / "fresh.sqlite", 384), tmp_path / "clean")
    for name in (layout.INDEX_FILE, layout.CHUNKS, layout.STORE):
        assert (tmp_path / "v2" / name).read_bytes() == (tmp_path / "clean" / name).read_bytes()


def test_a_flipped_vector_in_the_store_is_not_trusted_but_embedded_again(
        tiny_cfg, model_dir, compiled, pydoc_docs, tmp_path):
    import sqlite3

    store = vectors.VectorStore(tmp_path / "store.sqlite", 384)
    _build(tiny_cfg, model_dir, compiled, pydoc_docs[:2], store, tmp_path / "v1")
    store.close()
    with sqlite3.connect(tmp_path / "store.sqlite") as db:  # one byte of one vector flipped
        sha, blob = db.execute("SELECT text_sha, vector FROM vectors LIMIT 1").fetchone()
        db.execute("UPDATE vectors SET vector = ? WHERE text_sha = ?",
                   (bytes([blob[0] ^ 0xFF]) + blob[1:], sha))
    db.close()
    reopened = vectors.VectorStore(tmp_path / "store.sqlite", 384)
    _, notes = _build(tiny_cfg, model_dir, compiled, pydoc_docs[:2], reopened, tmp_path / "v2")
    assert (notes["embedded"], notes["store_rejected"]) == (1, 1)
    for name in (layout.INDEX_FILE, layout.STORE):
        assert (tmp_path / "v2" / name).read_bytes() == (tmp_path / "v1" / name).read_bytes()


def test_a_deleted_document_leaves_the_index_and_the_keyword_store(
        tiny_cfg, model_dir, compiled, pydoc_docs, tmp_path):
    import sqlite3

    from usearch.index import Index

    store = vectors.VectorStore(tmp_path / "store.sqlite", 384)
    before, _ = _build(tiny_cfg, model_dir, compiled, pydoc_docs[:3], store, tmp_path / "v1")
    after, notes = _build(tiny_cfg, model_dir, compiled, pydoc_docs[:2], store, tmp_path / "v2")
    gone = [c.key for c in before if c.source == pydoc_docs[2].source]
    assert notes["embedded"] == 0 and notes["removed"] == len(gone) > 0
    restored = Index.restore(str(tmp_path / "v2" / layout.INDEX_FILE))
    assert len(restored) == len(after) and not any(restored.contains(k) for k in gone)
    with sqlite3.connect(tmp_path / "v2" / layout.STORE) as db:
        keys = {row[0] for row in db.execute("SELECT key FROM chunks")}
    assert keys == {c.key for c in after} and not keys & set(gone)


def test_recall_counts_misses():
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((200, 16)).astype(np.float32)
    built = index.build(IndexConfig(dtype="f32"), vectors)
    assert index.recall_at_k(built, vectors, vectors[:20]) >= 0.99
    built.remove(list(range(50)))
    assert index.recall_at_k(built, vectors, vectors[:20]) < 0.99


def test_the_search_is_widened_to_the_narrowest_breadth_that_holds_recall():
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((4000, 32)).astype(np.float32)
    keys = rng.integers(0, 2**62, len(vectors)).astype(np.uint64)
    cfg = IndexConfig(dtype="f32", connectivity=4, expansion_add=16, expansion_search=2)
    built = index.build(cfg, vectors, keys)
    probes = vectors[:100]
    chosen = index.widen_search(built, vectors, keys, probes, cfg)
    assert chosen > 2 and built.expansion_search == chosen
    assert index.recall_at_k(built, vectors, probes, keys=keys) >= 0.99
    built.expansion_search = chosen // 2
    assert index.recall_at_k(built, vectors, probes, keys=keys) < 0.99
    assert index.search_settings(built, cfg)["expansion_search"] == chosen // 2


def test_a_breadth_cap_below_the_recall_target_is_said(monkeypatch, capsys):
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((4000, 32)).astype(np.float32)
    cfg = IndexConfig(dtype="f32", connectivity=4, expansion_add=16, expansion_search=2)
    built = index.build(cfg, vectors)
    monkeypatch.setattr(index, "MAX_EXPANSION", 4)
    assert index.widen_search(built, vectors, None, vectors[:100], cfg) == 4
    said = capsys.readouterr().err
    assert "at the widest search breadth (4), below index.min_recall_at_10" in said


class _RandomEmbedder:
    """Unit vectors drawn from a seed per text: 2,000 of them are a corpus HNSW finds hard."""

    dim = 32

    def embed(self, texts):
        rows = np.stack([np.random.default_rng(zlib.crc32(t.encode())).standard_normal(self.dim)
                         for t in texts]).astype(np.float32)
        return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_the_breadth_is_set_by_queries_not_by_the_index_own_vectors(tmp_path):
    """A stored vector finds itself at any breadth; a query does not. Widened on the index's own
    vectors this index kept breadth 8 and recall@10 0.71 on queries; on half the queries it
    widens until the other half holds 0.99."""
    chunks = [corpus.Chunk(key=i + 1, source=f"doc{i}", start=0, end=9, text=f"chunk {i}")
              for i in range(2000)]
    queries = [f"query {i}" for i in range(100)]
    cfg = IndexConfig(dtype="f32", connectivity=16, expansion_add=64, expansion_search=8)
    pte = _RandomEmbedder()
    notes = index.run(cfg, chunks, pte, pte, queries, tmp_path,
                      vectors.VectorStore(tmp_path / "vectors.sqlite", pte.dim), "here")
    assert notes["expansion_search"] > 8
    assert notes["recall_at_10"] >= 0.99


def test_fewer_than_two_queries_is_bad_input(tmp_path):
    pte = _RandomEmbedder()
    chunk = corpus.Chunk(key=1, source="doc", start=0, end=5, text="chunk")
    with pytest.raises(BadInput, match="1 held-out queries: .* at least two"):
        index.run(IndexConfig(), [chunk], pte, pte, ["one"], tmp_path,
                  vectors.VectorStore(tmp_path / "vectors.sqlite", pte.dim), "here")


@pytest.mark.slow
def test_8bit_embedder_is_smaller_and_close(tiny_cfg, compiled, model_dir, tmp_path):
    _, fp32_notes = compiled
    cfg = dataclasses.replace(tiny_cfg.embedder, quantize="8da8w")
    notes = embedder.compile_embedder(cfg, model_dir, tmp_path)
    assert notes["pte_bytes"] < fp32_notes["pte_bytes"] / 3
    pte = embedder.load_pte(tmp_path).embed(SENTENCES)
    fp32 = embedder.load_reference(model_dir, tmp_path).embed(SENTENCES)
    assert index.min_cosine(pte, fp32) >= 0.99


def test_two_embedding_processes_give_the_single_process_vectors(compiled, pydoc_docs,
                                                                  tiny_cfg, model_dir):
    texts = [c.text for c in _chunks(tiny_cfg, model_dir, pydoc_docs[:2])][:24]
    alone = embedder.load_pte(compiled[0]).embed(texts)
    with embedder.pte_pool(compiled[0], 2) as embed:
        spread = embed(texts)
    assert spread.tobytes() == alone.tobytes()


def test_a_small_corpus_is_embedded_in_this_process_and_a_large_one_by_one_per_core(
        monkeypatch):
    monkeypatch.delenv("EDGERAG_EMBED_WORKERS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0, 1, 2})
    assert embedder.default_workers(embedder.POOL_MIN_TEXTS - 1) == 1
    assert embedder.default_workers(embedder.POOL_MIN_TEXTS) == 3
    monkeypatch.setenv("EDGERAG_EMBED_WORKERS", "2")
    assert embedder.default_workers(10) == 2


def test_two_dask_workers_on_the_loopback_give_the_single_process_vectors(
        compiled, pydoc_docs, tiny_cfg, model_dir):
    from distributed import Client, LocalCluster, get_task_stream

    from pipeline.retrieval import embed_cluster

    texts = [c.text for c in _chunks(tiny_cfg, model_dir, pydoc_docs[:2])][:24]
    alone = embedder.load_pte(compiled[0]).embed(texts)
    with (LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                       dashboard_address=None) as cluster,
          Client(cluster.scheduler_address) as watcher, get_task_stream(watcher) as tasks,
          embed_cluster.pool(compiled[0], cluster.scheduler_address) as embed):
        watcher.wait_for_workers(2)  # shards are cut by the threads registered at call time
        spread = embed(texts)
        again = embed(texts[:5])
    assert spread.tobytes() == alone.tobytes() and again.tobytes() == alone[:5].tobytes()
    shards = [task for task in tasks.data if task["key"].startswith("_embed_shard")]
    assert len({task["worker"] for task in shards}) == 2  # both workers embedded
    # two per worker thread a call: 24 texts by 6, 5 by 2, 2 and 1. Keys, not records: under load
    # the task stream can record one task twice (8 records for 7 tasks, seen beside a benchmark)
    assert len({task["key"] for task in shards}) == 4 + 3


def test_an_unreachable_embedding_cluster_is_named_in_one_sentence(tmp_path):
    import dask

    from pipeline.retrieval import embed_cluster

    (tmp_path / layout.EMBEDDER_META).write_text('{"dim": 4}')
    refusal = r"could not reach the Dask scheduler at tcp://127.0.0.1:9 \(EDGERAG_EMBED_CLUSTER\)"
    with (dask.config.set({"distributed.comm.timeouts.connect": "2s"}),
          pytest.raises(BadInput, match=refusal),
          embed_cluster.pool(tmp_path, "tcp://127.0.0.1:9") as embed):
        embed(["a text"])
