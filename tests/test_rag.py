"""RAG judged on answers: question sets, retrieval and answer scores, keyword search and fusion,
and the answer's hygiene (special tokens, loops, evidence)."""

from __future__ import annotations

import json
import sqlite3

import numpy as np
import pytest

from pipeline import layout
from pipeline.config import RetrievalConfig
from pipeline.device import answer, retrieve
from pipeline.errors import BadInput
from pipeline.evaluation import rag
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
    path = tmp_path / layout.STORE
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
    keyword.write_store(tmp_path / layout.STORE, CHUNKS)
    dense_order = [3, 2, 1, 0]
    for mode, first in (("dense", 3), ("keyword", 0), ("hybrid", 0)):
        retriever = retrieve.Retriever(_Vectors(dense_order), tmp_path / layout.STORE,
                                       _Embedder(), RetrievalConfig(mode=mode, k=2))
        assert retriever.search("Where is add_subdirectory documented?")[0][0] == first, mode


def test_retrieval_settings_are_checked_in_one_sentence():
    with pytest.raises(BadInput, match=r"retrieval.mode='fuzzy' is not allowed; choose one of: "
                                       "dense, keyword, hybrid."):
        retrieve.check(RetrievalConfig(mode="fuzzy"))
    with pytest.raises(BadInput, match="retrieval.k=4 is above retrieval.candidates=2, the lists"):
        retrieve.check(RetrievalConfig(k=4, candidates=2))
    with pytest.raises(BadInput, match="retrieval.prompt_chunks=0 must be at least 1."):
        retrieve.check(RetrievalConfig(prompt_chunks=0))


def test_question_sets_name_documents_the_corpus_has(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text(json.dumps({"question": "q?", "expect": ["pydoc:with"]}) + "\n"
                    + json.dumps({"question": "r?", "expect": ["pydoc:nowhere"]}) + "\n")
    with pytest.raises(BadInput, match=r"q.jsonl line 2 expects pydoc:nowhere, which the corpus "
                                       "does not have"):
        rag.read_questions(path, {"pydoc:with"})
    path.write_text('{"question": "no expectation"}\n')
    with pytest.raises(BadInput, match="line 1 needs a question and either the document"):
        rag.read_questions(path, {"pydoc:with"})
    path.write_text('{"question": "both?", "expect": ["pydoc:with"], "unanswerable": true}\n')
    with pytest.raises(BadInput, match="line 1 needs a question and either the document"):
        rag.read_questions(path, {"pydoc:with"})
    path.write_text('{"question": "How do I install pip?", "unanswerable": true}\n')
    assert rag.read_questions(path, {"pydoc:with"})[0]["unanswerable"] is True


def test_the_shipped_question_sets_hold_together():
    from pydoc_data.topics import topics

    questions = rag.read_questions(REPO / "questions/pydoc.jsonl",
                                   {f"pydoc:{name}" for name in topics})
    answerable = [q for q in questions if not q["unanswerable"]]
    halves = {split: sum(q["split"] == split for q in answerable) for split in rag.SPLITS}
    assert len(answerable) >= 60 and min(halves.values()) >= 25
    assert all(q["answer_terms"] and q["answer"] for q in answerable)  # every one has a reference
    assert len(questions) - len(answerable) >= 15  # and the corpus does not answer these
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


def test_the_first_complete_answer_ends_at_a_blank_line_outside_code():
    shown, stopped = [], []
    guard = answer.Guard(set(), shown.append, lambda: stopped.append(True), first_answer=True)
    for piece in ("Use", " `with`", ":\n```\nwith f:\n\n", "    pass\n```\n", "It closes.",
                  "\n\nAnd", " it is fast.", "\n"):
        guard(piece)
        assert "And" not in "".join(shown)  # held until the next paragraph is known
    assert stopped == [True] and guard.ended and not guard.repeated
    assert guard.text() == "Use `with`:\n```\nwith f:\n\n    pass\n```\nIt closes."
    assert "".join(shown).strip() == guard.text()  # what streamed is what was kept
    assert answer.first_answer_end("\n\nLeading blank lines first.") is None
    example = "It closes.\n\nHere is an example:\n```\nwith f: pass\n```\n\nMore.\n"
    assert example[: answer.first_answer_end(example)].strip().endswith("pass\n```")
    announced = "Here is how:\n\n```\nwith open(f) as g:\n\n    pass\n```\n\nAnd then more.\n"
    assert announced[: answer.first_answer_end(announced)].strip().endswith("pass\n```")
    unfinished = "The method called is\n\n[5] __getattr__ is called.\n\nNext.\n"
    assert unfinished[: answer.first_answer_end(unfinished)].strip().endswith("called.")
    # Generation that ends on the paragraph after a complete answer: that paragraph is not shown.
    shown = []
    guard = answer.Guard(set(), shown.append, lambda: None, first_answer=True)
    for piece in ("It needs 3700k.", "\n\n\n", "This is the amount", " it needs."):
        guard(piece)
    guard.finish()
    assert "".join(shown).strip() == guard.text() == "It needs 3700k."


def test_special_tokens_never_reach_the_answer():
    guard = answer.Guard({"<|im_end|>"}, lambda _piece: None, lambda: None)
    for piece in ("The answer", " is 42.", "<|im_end|>"):
        guard(piece)
    assert guard.text() == "The answer is 42."


def test_an_answer_without_a_letter_is_not_shown_and_a_note_stands_for_it():
    shown: list[str] = []
    guard = answer.Guard(set(), shown.append, lambda: None)
    for piece in ("1.", " 1.", " 1."):
        guard(piece)
    assert shown == []  # held while no letter has come
    guard.finish()
    assert guard.wordless and guard.text() == answer.WORDLESS and shown == [answer.WORDLESS]
    shown.clear()
    guard = answer.Guard(set(), shown.append, lambda: None)
    for piece in ("1.", " 東京", "."):
        guard(piece)
    guard.finish()
    assert not guard.wordless and "".join(shown) == "1. 東京."


def _meaning(texts):
    """A stand-in embedder: a sentence means the set of its words (unit bag-of-words vectors),
    so which sentence is nearest is known."""
    vocabulary = sorted({w for t in texts for w in answer.content_words(t)})
    rows = np.array([[float(w in answer.content_words(t)) for w in vocabulary] for t in texts])
    return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-9)


def test_evidence_quotes_the_sentences_nearest_the_question_by_the_embedder():
    passages = [("pydoc:with", 100, "Intro text here, about nothing much at all. The with "
                 "statement calls __exit__ on the context manager, e.g. a file. Short one. "
                 "Unrelated closing words that say nothing.", "pydoc:with, § The with statement")]
    quoted = answer.evidence("What does the with statement call on exit?", passages, _meaning,
                             most=2)
    assert quoted[0].text == ("The with statement calls __exit__ on the context manager, e.g. "
                              "a file.")
    text = passages[0][2]
    assert text[quoted[0].start - 100 : quoted[0].end - 100] == quoted[0].text
    assert all(q.text != "Short one." for q in quoted)  # a fragment is no quote
    assert quoted[0].citation == "pydoc:with, § The with statement"


def test_evidence_ties_go_to_the_earlier_source_and_nothing_is_quoted_twice_or_from_nothing():
    same, reworded = ("The statement calls the method on exit here.",
                      "Here the statement calls the method on exit.")  # the same meaning
    passages = [("b", 0, same, "b"), ("a", 0, reworded, "a")]
    assert [q.source for q in answer.evidence("calls method exit", passages, _meaning)] == \
        ["b", "a"]
    overlapping = [("b", 0, same, "b"), ("b", 0, same, "b"), ("a", 0, reworded, "a")]
    assert [q.text for q in answer.evidence("calls method exit", overlapping, _meaning)] == \
        [same, reworded]
    assert answer.evidence("anything", [("a", 0, "Too short.", "a")], _meaning) == []


def test_a_quote_longer_than_a_sentence_is_cut_at_a_word_with_an_ellipsis():
    code = "int main(void) { " + " ".join(f"call_step_{n}(buffer);" for n in range(60)) + " }"
    quoted = answer.evidence("call step buffer", [("c", 10, code, "c")], _meaning)
    assert len(quoted[0].text) <= answer.MAX_QUOTE_CHARS + 2 and quoted[0].text.endswith(" …")
    assert code.startswith(quoted[0].text[:-2]) and code[quoted[0].end - 10] == " "


@pytest.mark.parametrize(("text", "expected"), [
    ("Edit CMakeLists.txt first. Then run make.", ["Edit CMakeLists.txt first.", "Then run make."]),
    ("Python 3.11.2 adds it. Older ones do not.", ["Python 3.11.2 adds it.", "Older ones do not."]),
    ("Use a context manager, e.g. open(). It closes the file.",
     ["Use a context manager, e.g. open().", "It closes the file."]),
    ("Call `os.path.join(a, b). x` to join. Done here.",
     ["Call `os.path.join(a, b). x` to join.", "Done here."]),
    ("A wrapped line\nwhich goes on. Next one!\n\nA new paragraph without a stop",
     ["A wrapped line which goes on.", "Next one!", "A new paragraph without a stop"]),
    ("Ask J. Smith about it. He knows?", ["Ask J. Smith about it.", "He knows?"]),
    ("See (the manual.) Then stop.", ["See (the manual.)", "Then stop."]),
])
def test_the_sentence_splitter_keeps_names_versions_abbreviations_and_code_whole(text,
                                                                                  expected):
    from pipeline.device.sentences import sentences

    found = sentences(text)
    assert [s for _, _, s in found] == expected
    assert all(" ".join(text[a:b].split()) == s for a, b, s in found)


class _Reranker:
    """Scores a passage by how often it says "the": a stand-in whose order is known."""

    def __init__(self):
        self.seen = []

    def score(self, question, passages):
        self.seen.append(passages)
        return [float(p.lower().split().count("the")) for p in passages]


def test_reranking_reorders_only_the_fused_head(tmp_path):
    keyword.write_store(tmp_path / layout.STORE, CHUNKS)
    dense_order = [3, 2, 1, 0]
    cfg = RetrievalConfig(mode="dense", k=4, rerank=True, rerank_candidates=3)
    stub = _Reranker()
    retriever = retrieve.Retriever(_Vectors(dense_order), tmp_path / layout.STORE,
                                   _Embedder(), cfg, stub)
    found = retriever.search("anything")
    # head [3, 2, 1] by "the" counts 0, 1, 1 → 1 and 2 tie (lower key first), then 3; 0 behind.
    assert [key for key, _ in found] == [1, 2, 3, 0]
    assert stub.seen == [[CHUNKS[3].text, CHUNKS[2].text, CHUNKS[1].text]]
    plain = retrieve.Retriever(_Vectors(dense_order), tmp_path / layout.STORE, _Embedder(),
                               RetrievalConfig(mode="dense", k=4))
    assert [key for key, _ in plain.search("anything")] == dense_order
    no_model = retrieve.Retriever(_Vectors(dense_order), tmp_path / layout.STORE, _Embedder(),
                                  cfg)
    with pytest.raises(BadInput, match="has no reranker"):
        no_model.search("anything")


def test_the_summary_says_what_reranking_gained():
    records = [{"split": "test", "hit_at_1": 1.0, "hit_at_k": 1.0, "reciprocal_rank": 1.0,
                "ndcg_at_10": 1.0, "grounded": 1.0, "repeated": False, "timings": {},
                "hit_at_1_fused": 0.0, "reciprocal_rank_fused": 0.5},
               {"split": "test", "hit_at_1": 0.0, "hit_at_k": 1.0, "reciprocal_rank": 0.5,
                "ndcg_at_10": 0.5, "grounded": 1.0, "repeated": False, "timings": {},
                "hit_at_1_fused": 0.0, "reciprocal_rank_fused": 0.5}]
    summary = rag.summarize(records, "test")
    assert summary["rerank_gain_hit_at_1"] == 0.5 and summary["rerank_gain_mrr"] == 0.25


def test_retrieval_alone_and_reranking_score_only_the_questions_that_expect_something():
    """An unanswerable question expects no document: nothing to rank it by (no nDCG ideal)."""
    from types import SimpleNamespace

    from pipeline.evaluation import expected
    from pipeline.retrieval.corpus import Chunk

    chunks = {1: Chunk(1, "pydoc:with", 0, 10, "with text"), 2: Chunk(2, "pydoc:for", 0, 10, "x")}
    retriever = SimpleNamespace(cfg=SimpleNamespace(rerank=True),
                                search=lambda question, depth, rerank=None: [(1, 0.9), (2, 0.5)])
    assistant = SimpleNamespace(retriever=retriever, chunks=chunks)
    questions = [{"question": "with?", "split": "test", "unanswerable": False,
                  "expect": ["pydoc:with"], "expected": expected.parse(["pydoc:with"])},
                 {"question": "tides?", "split": "test", "unanswerable": True, "expect": None,
                  "expected": []}]
    records = rag.ask_all(assistant, questions, 2, 10, 8, answers=False)
    assert records[0]["hit_at_1"] == 1.0 and records[0]["hit_at_1_fused"] == 1.0
    assert "hit_at_1" not in records[1] and "hit_at_1_fused" not in records[1]


@pytest.fixture(scope="module")
def tiny_cross_encoder(tiny_embedder_source, tmp_path_factory):
    """A random two-layer BERT cross-encoder (one label) with MiniLM's tokenizer."""
    import shutil

    import torch
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("cross_encoder")
    BertForSequenceClassification(BertConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=128, num_labels=1)).save_pretrained(folder)
    shutil.copy(tiny_embedder_source / "tokenizer.json", folder / "tokenizer.json")
    return folder


def test_the_reranker_pte_scores_as_the_eager_model(tiny_cross_encoder, tmp_path):
    from pipeline.config import RerankerConfig, Source
    from pipeline.retrieval import reranker

    cfg = RerankerConfig(name="tiny", source=Source(kind="local", path=str(tiny_cross_encoder)),
                         max_seq_len=64)
    notes = reranker.compile_reranker(cfg, tiny_cross_encoder, tmp_path)
    assert notes["pte_bytes"] > 0
    pte = reranker.load_pte_files(tmp_path / layout.RERANKER_PTE, tmp_path / "tokenizer.json")
    eager = reranker.load_reference(tiny_cross_encoder, 64)
    passages = ["short.", CHUNKS[0].text, "a passage far longer than the window " * 20]
    got, want = pte.score("what pulls in a folder?", passages), eager.score(
        "what pulls in a folder?", passages)
    assert got == pytest.approx(want, abs=1e-4) and len(set(got)) == 3


def test_rerank_without_a_reranker_fails_at_configure(tmp_path):
    from tests.conftest import edgerag_script, sh

    done = sh([edgerag_script(), "configure", "retrieval.rerank=true"], tmp_path, check=False)
    assert done.returncode == 2 and not (tmp_path / "params.yaml").exists()
    assert done.stderr.strip() == ("edgerag: retrieval.rerank=true needs a reranker: choose one "
                                   "with reranker=… (conf/reranker/).")


def test_an_invented_command_is_flagged_and_a_quoted_one_is_not():
    from pipeline.device.unsupported import code_spans, unsupported

    sources = ["Rotate the logs with logrotate: add /etc/logrotate.d/package and run "
               "`logrotate --force /etc/logrotate.conf`."]
    invented = "Use `rm -rf /var/log/package.log` to keep it small."
    assert unsupported(invented, sources) == ["rm -rf /var/log/package.log"]
    quoted = "Run `logrotate  --force /etc/logrotate.conf` or edit /etc/logrotate.d/package."
    assert unsupported(quoted, sources) == []
    fenced = "Like this:\n```sh\nlogrotate --force /etc/logrotate.conf\nshred -u x.log\n```"
    assert unsupported(fenced, sources) == ["shred -u x.log"]
    assert code_spans("Call os.path.join() with --verbose on ./a/b, not plain words.") == [
        "os.path.join()", "--verbose", "./a/b"]
    assert unsupported("Plain advice with no code at all.", sources) == []
    reference = ["Built-in functions: list(iterable) returns a list; see also str.split."]
    calls = "Use `list()` or `str.split(sep)`, then `os.remove(path)` and `split.x()`."
    assert unsupported(calls, reference) == ["os.remove(path)", "split.x()"]
    # reStructuredText's double backticks pair with each other, not with the text between
    rst = "The ``rb`` command makes the bucket ``my-bucket`` in ``us-west-2``."
    assert code_spans(rst) == ["my-bucket", "us-west-2"]  # `rb` is too short to judge


def test_the_abstention_rule_weighs_its_signals_against_a_threshold():
    from pipeline.config import AbstainConfig
    from pipeline.device import abstain

    assert abstain.rule(RetrievalConfig(abstain=AbstainConfig(below=0.0))) is None  # never
    rule = abstain.rule(RetrievalConfig(abstain=AbstainConfig(
        below=0.9, dense_cosine=1.0, keyword_agreement=0.0, coverage=0.5, evidence_cosine=0.0)))
    near = {"dense_cosine": 0.7, "keyword_agreement": 0.0, "coverage": 0.6,
            "evidence_cosine": 0.9}
    far = {"dense_cosine": 0.3, "keyword_agreement": 1.0, "coverage": 0.4,
           "evidence_cosine": 0.9}
    assert not rule.abstains(near) and rule.abstains(far)


def test_the_summary_scores_abstention_over_both_kinds_of_question():
    def row(unanswerable, abstained, unsupported=()):
        return {"split": "test", "unanswerable": unanswerable, "abstained": abstained,
                "unsupported": list(unsupported), "repeated": False, "timings": {},
                **({} if unanswerable else {"hit_at_1": 1.0, "evidence_hit_at_1": 1.0})}

    rows = [row(True, True), row(True, False), row(False, False, ["rm -rf /"]),
            row(False, False), row(False, True), row(False, False)]
    summary = rag.summarize(rows, "test")
    assert summary["questions"] == 4 and summary["unanswerable_questions"] == 2
    assert summary["abstain_recall"] == 0.5 and summary["false_abstain_rate"] == 0.25
    assert summary["unsupported_code_rate"] == 0.25  # 1 of the 4 answers given
    assert summary["invented_code_rate"] == 0.25
    assert summary["evidence_hit_at_1"] == 1.0


def test_an_answer_said_again_after_it_ended_is_the_answer_not_a_loop():
    shown, stopped = [], []
    guard = answer.Guard(set(), shown.append, lambda: stopped.append(True), first_answer=True)
    said = "The debugger runs only when the interpreter is not optimized by the flag."
    for word in f"{said}\n\n{said} {said}".split(" "):
        guard(word + " ")
    assert stopped == [True] and guard.ended and not guard.repeated
    assert guard.text() == said == "".join(shown).strip()


def test_an_invented_code_block_is_held_then_left_out_and_never_streamed():
    from pipeline.device.unsupported import unsupported

    sources = ["Rotate the logs: logrotate --force /etc/logrotate.conf"]
    shown = []
    guard = answer.Guard(set(), shown.append, lambda: None, first_answer=True,
                         vet=lambda b: b if not unsupported(b, sources) else "(left out)")
    for piece in ("Rotate them.", " Like this:\n", "```sh\nrm -rf", " /var/log/x\n```\n",
                  "Or:\n```\nlogrotate --force /etc/logrotate.conf\n```\n"):
        guard(piece)
        assert "rm -rf" not in "".join(shown)
    guard.finish()
    assert guard.text() == "".join(shown).strip() == (
        "Rotate them. Like this:\n(left out)\nOr:\n```\nlogrotate --force "
        "/etc/logrotate.conf\n```")


def test_a_sentence_naming_invented_code_is_held_then_left_out_and_never_streamed():
    from pipeline.device.unsupported import unsupported

    sources = ["Rotate the logs with logrotate, e.g. logrotate --force /etc/logrotate.conf."]
    shown = []
    guard = answer.Guard(set(), shown.append, lambda: None, vet_sentence=lambda s: (
        s if not unsupported(s, sources) else "(left out)"))
    for piece in ("Rotate them with logrotate.", " Or run `rm", " -rf /var/log/x`. ", "Or ",
                  "delete with `rm -rf /var`.", " Then `logrotate --force /etc/logrotate.conf`",
                  " runs."):
        guard(piece)
        assert "rm -rf" not in "".join(shown)
    assert "".join(shown) == "Rotate them with logrotate. (left out) "  # the last is undecided
    guard.finish()
    assert guard.text() == "".join(shown).strip() == (
        "Rotate them with logrotate. (left out) Then `logrotate --force "
        "/etc/logrotate.conf` runs.")  # one note for the run of two


def test_the_answer_ends_after_its_sentence_budget_but_not_inside_an_abbreviation():
    stopped = []
    guard = answer.Guard(set(), lambda _p: None, lambda: stopped.append(True), most_sentences=2)
    for piece in ("It calls __exit__, e.g. on a file.", " It does so", " even on error. ",
                  "Then it", " wanders on."):
        guard(piece)
    assert stopped == [True] and guard.ended and not guard.repeated
    assert guard.text() == "It calls __exit__, e.g. on a file. It does so even on error."


@pytest.mark.parametrize(("text", "kept"), [
    ("Answer: " + ":" * 30, "Answer: :"),
    ("日本語の説明" + "ですです" * 8, "日本語の説明です"),
    ("A normal sentence with ::: in it.", None),
])
def test_a_loop_without_spaces_is_found_by_its_characters(text, kept):
    start = answer.char_repeat_start(text)
    assert (text[:start] if start is not None else None) == kept


RST = """**Example 1: Copying a local file to S3**

The following ``cp`` command copies a single file to a specified bucket and key::

    aws s3 cp test.txt s3://bucket/test2.txt

Output::

    upload: test.txt to s3://bucket/test2.txt

**Example 2: Recursively copying local files to S3**

When passed with the parameter ``--recursive``, the following ``cp`` command recursively copies
all files under a specified directory to a specified bucket::

    aws s3 cp myDir s3://bucket/ \\
        --recursive
"""


def test_code_blocks_are_commands_with_their_introduction_not_outputs_or_indented_prose():
    from pipeline.device.examples import code_blocks

    blocks = code_blocks(RST)
    assert [code for _, code in blocks] == ["aws s3 cp test.txt s3://bucket/test2.txt",
                                            "aws s3 cp myDir s3://bucket/ \\\n    --recursive"]
    assert blocks[1][0].startswith("When passed with the parameter ``--recursive``")
    described = ("sort(*, key=None)\n\n   This method sorts the list in place, using only "
                 "comparisons\n   between items. Exceptions are not suppressed.\n")
    assert code_blocks(described) == []  # pydoc's indented description is prose
    fenced = "Run this:\n\n```sh\n$ make test\n```\n"
    assert code_blocks(fenced) == [("Run this:", "$ make test")]
    assert code_blocks("    cut from its introduction --at the chunk's start\n") == []


def test_the_documents_example_nearest_the_question_stands_in_for_an_invented_one():
    from pipeline.device import examples

    vocabulary = ("recursive", "directory", "single", "file", "copies", "bucket")

    def embed(texts):  # a text means which of a fixed vocabulary it holds
        rows = np.array([[float(w in t.lower()) for w in vocabulary] for t in texts]) + 1e-3
        return rows / np.linalg.norm(rows, axis=1, keepdims=True)

    question = embed(["How do I copy a whole directory, recursive, to a bucket?"])[0]
    found = examples.nearest(question, [("Only words here.", "s3/ls.rst"), (RST, "s3/cp.rst")],
                             embed)
    assert found.code == "aws s3 cp myDir s3://bucket/ \\\n    --recursive"
    assert examples.shown(found) == ("```\naws s3 cp myDir s3://bucket/ \\\n    --recursive\n```\n"
                                     "(An example from your documents: s3/cp.rst.)")
    assert examples.nearest(question, [("Only words here.", "s3/ls.rst")], embed) is None
    long = "Run all of these steps::\n\n" + "".join(f"    step {n} --go\n" for n in range(30))
    cut = examples.nearest(question, [(long, "x")], embed).code.splitlines()
    assert len(cut) == examples.MOST_LINES + 1 and cut[-1] == "…"
