"""A folder with no question set: known-item probes derived from the corpus, what a question
may expect (a document, a section, pages, a span), and the release rule that gates on probes."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from pipeline import layout
from pipeline.config import ReleaseConfig, RetrievalConfig
from pipeline.device.retrieve import Retriever
from pipeline.errors import BadInput
from pipeline.evaluation import expected, probes, rag
from pipeline.release import promote
from pipeline.retrieval import keyword
from pipeline.retrieval.corpus import Chunk, embedding_text

TOPICS = {
    "Log files": "Rotate the package log files weekly with logrotate so they never fill the disk. "
                 "Old logs are compressed after the first rotation.",
    "Memory use": "Decompression needs about four megabytes of working memory per block. "
                  "Small machines can pass the small flag to halve the memory use.",
    "Font matching": "Fontconfig matches a requested pattern against every installed font face. "
                     "The best match wins by comparing weight, slant and family in order.",
    "Mime types": "Each shared mime database entry maps glob patterns onto a media type name. "
                  "Magic rules read the first bytes of the file when the name says nothing.",
}


def _chunks() -> list[Chunk]:
    chunks, key = [], 0
    for page, (section, text) in enumerate(TOPICS.items(), start=1):
        for half in text.split(". "):
            chunks.append(Chunk(key, "manual.pdf", key * 100, key * 100 + len(half), half + ".",
                                f"manual.pdf › {section}", True, page, page))
            key += 1
    return chunks


class _Words:
    """A deterministic embedder: hashed bag of words, unit length."""

    def embed(self, texts):
        out = np.zeros((len(texts), 64), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in text.lower().replace(".", " ").split():
                out[row, hashlib.sha256(word.encode()).digest()[0] % 64] += 1.0
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)


@pytest.fixture
def retriever(tmp_path):
    # usearch loaded before torch in a process breaks torch.export's schema parsing there
    # (measured: this module, then tests/test_release.py's tiny embedder export, on one worker).
    import torch  # noqa: F401
    from usearch.index import Index

    chunks = _chunks()
    keyword.write_store(tmp_path / layout.STORE, chunks)
    index = Index(ndim=64, metric="cos")
    index.add(np.array([c.key for c in chunks]), _Words().embed([embedding_text(c)
                                                                for c in chunks]))
    return Retriever(index, tmp_path / layout.STORE, _Words(), RetrievalConfig(k=2, candidates=8))


def test_an_expected_item_narrows_a_document_to_a_section_pages_or_a_span():
    chunk = _chunks()[2]  # Memory use, page 2, characters 200-...
    assert expected.Expected("manual.pdf").holds(chunk)
    assert expected.Expected("manual.pdf", section="memory use").holds(chunk)
    assert not expected.Expected("manual.pdf", section="Log files").holds(chunk)
    assert expected.Expected("manual.pdf", pages=(2, 3)).holds(chunk)
    assert not expected.Expected("manual.pdf", pages=(3, 4)).holds(chunk)
    assert expected.Expected("manual.pdf", span=(250, 260)).holds(chunk)
    assert not expected.Expected("manual.pdf", span=(0, 200)).holds(chunk)
    assert not expected.Expected("manual.html").holds(chunk)
    wanted = expected.parse([{"source": "manual.pdf", "section": "Memory use", "pages": [2, 2]}])
    assert expected.labels(_chunks()[:3], wanted) == ["manual.pdf", "manual.pdf", "expect:0"]
    with pytest.raises(ValueError, match="two whole numbers"):
        expected.parse([{"source": "manual.pdf", "pages": [3, 1]}])


def test_a_question_naming_both_editions_counts_the_one_the_corpus_holds(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text(json.dumps({"question": "How much memory?", "expect": [
        {"source": "manual.html", "section": "Memory use"},
        {"source": "manual.pdf", "section": "Memory use", "pages": [2, 2]}]}) + "\n")
    [question] = rag.read_questions(path, {"manual.pdf"})
    assert question["expect"] == ["manual.pdf, § Memory use, p. 2–2"]
    with pytest.raises(BadInput, match="line 1 expects manual.html, which the corpus does not"):
        rag.read_questions(path, {"other.pdf"})
    path.write_text(json.dumps({"question": "q?", "expect": [{"source": "a", "pages": "2"}]}))
    with pytest.raises(BadInput, match=r"q.jsonl line 1: a range is two whole numbers"):
        rag.read_questions(path, {"a"})


def test_probes_are_seeded_and_take_out_what_they_ask():
    chunks = _chunks()
    derived = probes.derive(chunks, 6, seed=0)
    assert derived == probes.derive(chunks, 6, seed=0)
    assert derived != probes.derive(chunks, 6, seed=1)
    assert {p.kind for p in derived} == {"sentence", "heading"}
    changed = probes.masked({c.key: c for c in chunks}, derived)
    for probe in derived:
        assert probe.keys and set(probe.keys) <= set(changed)
        for key in probe.keys:
            if probe.kind == "sentence":
                assert probe.taken not in changed[key].text
            else:
                assert changed[key].heading == "" and not changed[key].embeds_heading


def test_a_probe_retrieves_its_chunk_with_its_text_taken_out_of_a_copy(retriever):
    derived = [p for p in probes.derive(_chunks(), 8, seed=0) if p.kind == "heading"]
    copy = probes.retriever_without(retriever, probes.masked(
        {c.key: c for c in _chunks()}, derived))
    records = probes.score(copy, derived, k=2, depth=8)
    assert records and all(r["kind"] == "heading" for r in records)
    summary = probes.summarize(records)
    assert summary["probes"] == len(derived) and 0.0 <= summary["hit_at_k"] <= 1.0
    # The copy lost the headings; the release's own store did not.
    heading = derived[0].taken
    assert copy.db.execute("SELECT count(*) FROM chunks WHERE heading = ?", (heading,)
                           ).fetchone()[0] == 0
    assert retriever.db.execute("SELECT count(*) FROM chunks WHERE heading = ?", (heading,)
                                ).fetchone()[0] == len(derived[0].keys)
    assert len(copy.index) == len(retriever.index)


def test_a_probe_file_is_checked(tmp_path):
    path = tmp_path / "auto.yaml"
    path.write_text("probes: 10\n")
    assert probes.settings(path) == {"probes": 10, "seed": 0}
    path.write_text("probes: 10\nquestions: 3\n")
    with pytest.raises(BadInput, match="may set only probes, seed"):
        probes.settings(path)
    path.write_text("probes: 0\n")
    with pytest.raises(BadInput, match="probes must be a whole number ≥ 1"):
        probes.settings(path)


def test_the_release_rule_gates_a_run_with_no_question_set_on_its_probes():
    rule = ReleaseConfig(min_rag_hit_at_k=0.9, min_rag_auto_hit_at_k=0.5, min_rag_grounded=0.5,
                         max_rag_repetition_rate=0.1)
    base = {promote.PTE_BYTES: 1e6, promote.PPL_DELTA: 1.0, promote.RECALL: 1.0,
            promote.AUTO_PROBES: 40}
    assert promote.missed_bound(rule, {**base, promote.AUTO_HIT: 0.9}) is None
    assert promote.missed_bound(rule, {**base, promote.AUTO_HIT: 0.4}) == (
        "rag_auto.hit_at_k=0.4 is below release.min_rag_auto_hit_at_k=0.5")
    assert "40 probes derived from the corpus" in promote.gate_line({**base,
                                                                     promote.AUTO_HIT: 0.9})
    judged = {**base, promote.AUTO_HIT: 0.9, promote.RAG_HIT: 0.95, promote.RAG_GROUNDED: 0.9}
    assert promote.gate_line(judged) is None  # a question set, when there is one, decides
    assert promote.missed_bound(rule, judged) == "it has no rag.repetition_rate metric"


def test_the_folder_corpus_brings_its_probe_file_and_is_watched(tmp_path):
    from pipeline import conf

    composed = conf.compose(["corpus=dir", f"corpus.path={tmp_path}"])
    assert composed.rag_eval.questions == "questions/auto.yaml"
    assert composed.corpus.watch == str(tmp_path)
    assert conf.compose([]).rag_eval.questions == "questions/pydoc.jsonl"


def test_the_release_rule_gates_on_the_index_vectors_parity():
    rule = ReleaseConfig(min_embed_cosine=0.9)
    base = {promote.PTE_BYTES: 1e6, promote.PPL_DELTA: 1.0, promote.RECALL: 1.0,
            promote.AUTO_HIT: 0.9, promote.AUTO_PROBES: 40}
    assert promote.missed_bound(rule, {**base, promote.EMBED_COSINE: 0.9999}) is None
    assert promote.missed_bound(rule, {**base, promote.EMBED_COSINE: -1.0}) == (
        "retrieval.embed_cosine_min=-1 is below release.min_embed_cosine=0.9")
    assert promote.missed_bound(rule, base) == "it has no retrieval.embed_cosine_min metric"
