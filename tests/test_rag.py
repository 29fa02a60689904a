"""RAG judged on answers: question sets, retrieval and answer scores, keyword search and fusion,
and the answer's hygiene (special tokens, loops, evidence)."""

from __future__ import annotations

import json
import sqlite3

import pytest

from pipeline.config import RetrievalConfig
from pipeline.errors import BadInput
from pipeline.evaluation import rag
from pipeline.release import answer, retrieve
from pipeline.retrieval import keyword
from pipeline.retrieval.corpus import Chunk
from tests.conftest import REPO

CHUNKS = [
    Chunk(0, "cmake:build", 0, 60, "Call add_subdirectory to pull another folder into the build."),
    Chunk(1, "py:init", 0, 50, "The __init__ method runs when a new instance is made."),
    Chunk(2, "py:paths", 0, 50, "os.path.join glues path parts with the separator."),
    Chunk(3, "py:misc", 0, 40, "Nothing in here names any function at all."),
]


@pytest.fixture
def store(tmp_path):
    path = tmp_path / keyword.STORE
    keyword.write_store(path, CHUNKS)
    return sqlite3.connect(f"file:{path}?mode=ro&immutable=1", uri=True)


def test_keyword_search_finds_code_identifiers_whole(store):
    assert retrieve.keyword_search(store, "How do I use add_subdirectory?", 5) == [0]
    assert retrieve.keyword_search(store, "what does __init__ do", 5) == [1]
    assert retrieve.keyword_search(store, "os.path.join", 5) == [2]
    assert retrieve.keyword_search(store, "how do I", 5) == []  # only stopwords


def test_the_store_is_the_same_bytes_for_the_same_chunks(tmp_path):
    for name in ("a.sqlite", "b.sqlite"):
        keyword.write_store(tmp_path / name, list(reversed(CHUNKS)))
    assert (tmp_path / "a.sqlite").read_bytes() == (tmp_path / "b.sqlite").read_bytes()


def test_fusion_with_one_weight_zero_is_the_other_list_alone():
    dense, keyword_ranked = [3, 1, 2], [0, 2]
    only_dense = RetrievalConfig(keyword_weight=0.0)
    assert [k for k, _ in retrieve.fuse(dense, keyword_ranked, only_dense)] == dense
    only_keyword = RetrievalConfig(dense_weight=0.0)
    assert [k for k, _ in retrieve.fuse(dense, keyword_ranked, only_keyword)] == keyword_ranked
    both = retrieve.fuse(dense, keyword_ranked, RetrievalConfig(rrf_k=60))
    assert both[0][0] == 2 and both[0][1] == pytest.approx(1 / 63 + 1 / 62)


class _Vectors:
    """A dense side that ranks the identifier's chunk last: keyword search must rescue it."""

    def __init__(self, order):
        self.order = order

    def search(self, _vector, n):
        return type("Matches", (), {"keys": self.order[:n]})()


class _Embedder:
    def embed(self, texts):
        return [[0.0] for _ in texts]


def test_hybrid_rescues_an_identifier_the_dense_index_ranks_last(tmp_path):
    keyword.write_store(tmp_path / keyword.STORE, CHUNKS)
    dense_order = [3, 2, 1, 0]
    for mode, first in (("dense", 3), ("keyword", 0), ("hybrid", 0)):
        retriever = retrieve.Retriever(_Vectors(dense_order), tmp_path / keyword.STORE,
                                       _Embedder(), RetrievalConfig(mode=mode, k=2))
        assert retriever.search("Where is add_subdirectory documented?")[0][0] == first, mode


def test_retrieval_settings_are_checked_in_one_sentence():
    with pytest.raises(BadInput, match=r"retrieval.mode='fuzzy' is not allowed; choose one of: "
                                       "dense, keyword, hybrid."):
        retrieve.check(RetrievalConfig(mode="fuzzy"))
    with pytest.raises(BadInput, match="retrieval.candidates=2 at least k"):
        retrieve.check(RetrievalConfig(k=4, candidates=2))


def test_question_sets_name_documents_the_corpus_has(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text(json.dumps({"question": "q?", "expect": ["pydoc:with"]}) + "\n"
                    + json.dumps({"question": "r?", "expect": ["pydoc:nowhere"]}) + "\n")
    with pytest.raises(BadInput, match=r"q.jsonl line 2 expects pydoc:nowhere, which the corpus "
                                       "does not have"):
        rag.read_questions(path, {"pydoc:with"})
    path.write_text('{"question": "no expectation"}\n')
    with pytest.raises(BadInput, match="line 1 needs a question and the document"):
        rag.read_questions(path, {"pydoc:with"})


def test_the_shipped_question_sets_hold_together():
    from pydoc_data.topics import topics

    questions = rag.read_questions(REPO / "questions/pydoc.jsonl",
                                   {f"pydoc:{name}" for name in topics})
    halves = {split: sum(q["split"] == split for q in questions) for split in rag.SPLITS}
    assert len(questions) >= 60 and min(halves.values()) >= 25
    assert all(q["answer_terms"] for q in questions)
    assert len({q["question"] for q in questions}) == len(questions)


def test_retrieval_scores_by_document():
    scores = rag.retrieval_scores(["b", "a", "c"], ["a"], ["b", "a"])
    assert scores == {"hit_at_1": 0.0, "hit_at_k": 1.0, "reciprocal_rank": 0.5,
                      "ndcg_at_10": pytest.approx(1 / 1.5849625)}
    assert rag.retrieval_scores(["a"], ["a", "z"], ["a"])["ndcg_at_10"] == pytest.approx(
        1 / (1 + 1 / 1.5849625))
    assert rag.retrieval_scores(["x"], ["a"], ["x"])["reciprocal_rank"] == 0.0


def test_answer_scores():
    record = {"answer_terms": ["__exit__", "finally"], "answer": "the with statement"}
    scores = rag.answer_scores("It calls __exit__ when the with block ends.", record,
                               context="with calls __enter__ then __exit__ when the block ends")
    assert scores["answer_terms_recall"] == 0.5
    assert scores["answer_f1"] == pytest.approx(2 * (2 / 8) * (2 / 3) / (2 / 8 + 2 / 3))
    # content words: calls, __exit__, with, block, ends ("with" is a stopword): all in context
    assert scores["grounded"] == 1.0
    assert rag.answer_scores("Bananas.", {}, "nothing")["grounded"] == 0.0


def test_a_looping_answer_stops_and_is_cut_before_the_repeat():
    stopped, shown = [], []
    guard = answer.Guard({"<|im_end|>"}, shown.append, lambda: stopped.append(True))
    sentence = "The with statement calls the exit method. "
    for word in (sentence * 3).split(" "):
        guard(word + " ")
    assert stopped and guard.repeated
    assert guard.text() == sentence.strip()


def test_special_tokens_never_reach_the_answer():
    guard = answer.Guard({"<|im_end|>"}, lambda _piece: None, lambda: None)
    for piece in ("The answer", " is 42.", "<|im_end|>"):
        guard(piece)
    assert guard.text() == "The answer is 42."


def test_evidence_quotes_the_sentences_sharing_most_words_with_the_question():
    passages = [("pydoc:with", 100, "Intro text here. The with statement calls __exit__ on "
                 "the context manager. Unrelated closing words.")]
    quoted = answer.evidence("What does the with statement call on exit?", passages, most=1)
    assert quoted[0].text == "The with statement calls __exit__ on the context manager."
    text = passages[0][2]
    assert text[quoted[0].start - 100 : quoted[0].end - 100] == quoted[0].text
