"""RAG judged on answers: the release's own loop (`ask.Assistant`) over a question set.

A question set is JSONL, one object a line: `question`; `expect`, the source document(s) that
answer it (`"pydoc:with"`, or narrowed to a section, pages or a character span: `expected`) or
`"unanswerable": true` (the corpus does not answer it: `ask` should say so); optionally
`answer_terms` (words a correct answer contains) and a reference `answer`. Each question falls
in the `tune` or the `test` half by a fixed rule (the parity of its sha256's first byte), so
nobody picks the halves: settings are chosen on `tune`, and `rag.*` (what releases are gated
on) is `test`.

Per question:
- retrieval, by expected item (chunks ranked by the release's retrieval, each counted as the
  item it is or its document, repeats dropped): `hit_at_1`, `hit_at_k` (among the
  `retrieval.k` sources shown; the prompt gets the first `retrieval.prompt_chunks`),
  reciprocal rank, and nDCG@10 with every expected item relevant;
- answer: `answer_terms_recall` (share of the terms found in the answer, case-insensitive),
  token F1 against the reference answer where there is one, and `grounded`: the share of the
  answer's content words (three letters or more, not stopwords) that occur in the sources the
  prompt carried (an answer with no content words counts 0) — a cheap faithfulness signal: it
  cannot tell a right answer from a wrong one drawn from the sources, but it does catch words
  that came from nowhere;
- with `retrieval.rerank`, the same retrieval scores without the reranker (`*_fused`), so the
  summary says what reranking gained (`rerank_gain_hit_at_1`, `rerank_gain_mrr`);
- `repeated`: the answer looped and was cut (`answer.Guard`);
- `context_cut`: the prompt could not hold its chunks whole (the rate says whether the
  release's context is long enough for its `retrieval.prompt_chunks`);
- latency: retrieval ms, time to first token, decode tok/s and total ms (medians in the metrics).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections import Counter
from pathlib import Path
from statistics import mean, median
from typing import Any

from pipeline.config import RagEvalConfig
from pipeline.device.answer import content_words
from pipeline.errors import BadInput
from pipeline.evaluation import expected
from pipeline.progress import bar

SPLITS = ("tune", "test")
NDCG_DEPTH = 10
_TOKEN = re.compile(r"[a-z0-9_]+")


def check(cfg: RagEvalConfig) -> None:
    if cfg.max_new_tokens < 1:
        raise BadInput(f"rag_eval.max_new_tokens={cfg.max_new_tokens} must be at least 1: "
                       "evaluate_rag judges generated answers.")


def split_of(question: str) -> str:
    return SPLITS[hashlib.sha256(question.encode()).digest()[0] % 2]


def read_questions(path: Path, sources: set[str]) -> list[dict]:
    """The question set, checked before any work: every question names documents the corpus has
    (of the items it expects, those in documents the corpus lacks are dropped: see
    `expected`)."""
    if not path.is_file():
        raise BadInput(f"rag_eval.questions={str(path)!r} does not exist.")
    questions = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise BadInput(f"{path} line {number} is not JSON.") from None
        try:
            items = expected.parse(record.get("expect")) if isinstance(record, dict) \
                and "expect" in record else []
        except ValueError as error:
            raise BadInput(f"{path} line {number}: {error}.") from None
        unanswerable = isinstance(record, dict) and record.get("unanswerable") is True
        if not isinstance(record, dict) or not str(record.get("question", "")).strip() \
                or not (items or unanswerable) or (items and unanswerable):
            raise BadInput(f"{path} line {number} needs a question and either the document(s) "
                           "it expects (`expect`) or `\"unanswerable\": true`.")
        held = [item for item in items if item.source in sources]
        if items and not held:
            raise BadInput(f"{path} line {number} expects {items[0].source}, which the corpus "
                           "does not have; fix the question set or the corpus.")
        questions.append({**record, "expect": [item.describe() for item in held],
                          "expected": held, "unanswerable": unanswerable,
                          "split": split_of(record["question"])})
    if not questions:
        raise BadInput(f"{path} holds no questions.")
    return questions


def documents_in_order(sources: list[str]) -> list[str]:
    return list(dict.fromkeys(sources))


def retrieval_scores(ranked: list[str], expected: list[str], k_ranked: list[str]
                     ) -> dict[str, float]:
    """`ranked`: documents by rank (deep list); `k_ranked`: those of the prompt's k chunks."""
    wanted = set(expected)
    first = next((i for i, doc in enumerate(ranked, start=1) if doc in wanted), None)
    dcg = sum(1.0 / math.log2(i + 2) for i, doc in enumerate(ranked[:NDCG_DEPTH])
              if doc in wanted)
    ideal = sum(1.0 / math.log2(i + 2) for i in range(min(len(wanted), NDCG_DEPTH)))
    return {"hit_at_1": float(bool(ranked) and ranked[0] in wanted),
            "hit_at_k": float(bool(wanted & set(k_ranked))),
            "reciprocal_rank": 1.0 / first if first else 0.0,
            "ndcg_at_10": dcg / ideal}


def token_f1(answer: str, reference: str) -> float:
    ours, theirs = Counter(_TOKEN.findall(answer.lower())), Counter(_TOKEN.findall(
        reference.lower()))
    common = sum((ours & theirs).values())
    if not common:
        return 0.0
    precision, recall = common / sum(ours.values()), common / sum(theirs.values())
    return 2 * precision * recall / (precision + recall)


def answer_scores(answer: str, record: dict, context: str) -> dict[str, float | None]:
    terms = record.get("answer_terms") or []
    words = content_words(answer)
    return {
        "answer_terms_recall": (sum(t.lower() in answer.lower() for t in terms) / len(terms)
                                if terms else None),
        "answer_f1": token_f1(answer, record["answer"]) if record.get("answer") else None,
        "grounded": len(words & content_words(context)) / len(words) if words else 0.0,
    }


def evidence_hit(quotes: list[Any], record: dict) -> float:
    """Whether the top evidence quote holds an answer term, or (with no terms) half the content
    words of the reference answer."""
    if not quotes:
        return 0.0
    top = quotes[0].text.lower()
    terms = record.get("answer_terms") or []
    if terms:
        return float(any(term.lower() in top for term in terms))
    reference = content_words(record.get("answer") or "")
    return float(bool(reference) and len(reference & content_words(top)) >= len(reference) / 2)


def _ranked(assistant: Any, record: dict, depth: int, rerank: bool) -> list[str]:
    """The `depth` best chunks, with or without the configured reranker, as `expected.labels`:
    the expected item each is, or its document."""
    found = assistant.retriever.search(record["question"], depth, rerank)
    return expected.labels([assistant.chunks[key] for key, _ in found], record["expected"])


def ask_all(assistant: Any, questions: list[dict], k: int, depth: int, max_new_tokens: int,
            answers: bool = True) -> list[dict]:
    """One record per question: what was retrieved and answered, and its scores (`answers`
    False: retrieval alone, the prompt's sources taken as the top `k` chunks)."""
    records = []
    rerank = assistant.retriever.cfg.rerank
    for record in bar(questions, desc="questions", unit="q"):
        deep = _ranked(assistant, record, depth, rerank)
        wanted = expected.wanted_labels(record["expected"])
        before = {}
        if rerank and not record["unanswerable"]:  # nothing expected: nothing to score
            fused = _ranked(assistant, record, depth, False)
            scores = retrieval_scores(documents_in_order(fused), wanted, [])
            before = {f"{key}_fused": scores[key] for key in ("hit_at_1", "reciprocal_rank")}
        row = {"question": record["question"], "split": record["split"],
               "expect": record["expect"], "unanswerable": record["unanswerable"],
               "retrieved": documents_in_order(deep)[:NDCG_DEPTH]}
        if not answers:
            records.append({**row, "repeated": False, "timings": {}, **before,
                            **({} if record["unanswerable"] else retrieval_scores(
                                documents_in_order(deep), wanted, deep[:k]))})
            continue
        answer = assistant.ask(record["question"], k, max_new_tokens, lambda _piece: None)
        shown = deep[: len(answer.sources)]  # the sources shown lead the same ranking
        context = "\n".join(assistant.passage(s) for s in answer.sources if s.in_prompt)
        scores = {} if record["unanswerable"] else {
            **retrieval_scores(documents_in_order(deep), wanted, shown), **before,
            **answer_scores(answer.answer, record, context),
            "evidence_hit_at_1": evidence_hit(answer.evidence, record)}
        records.append({
            **row, "answer": answer.answer, "repeated": answer.repeated,
            "context_cut": answer.context_cut, "abstained": answer.abstained,
            "unsupported": answer.unsupported, "left_out": answer.left_out,
            "signals": answer.signals,
            "evidence": [quote.text for quote in answer.evidence], **scores,
            "timings": answer.timings})
    return records


def _mean(records: list[dict], key: str) -> float | None:
    values = [r[key] for r in records if r.get(key) is not None]
    return round(mean(values), 4) if values else None


def _median(records: list[dict], key: str) -> float | None:
    values = [r["timings"][key] for r in records if key in r["timings"]]
    return round(median(values), 2) if values else None


def summarize(records: list[dict], split: str) -> dict[str, Any]:
    """The half's figures: retrieval and answers over its answerable questions, abstention over
    both kinds, latency over all."""
    every = [r for r in records if r["split"] == split]
    chosen = [r for r in every if not r.get("unanswerable")]
    refused = [r for r in every if r.get("unanswerable")]
    summary: dict[str, Any] = {"questions": len(chosen), "unanswerable_questions": len(refused)}
    for key in ("hit_at_1", "hit_at_k", "ndcg_at_10", "answer_terms_recall", "answer_f1",
                "grounded", "evidence_hit_at_1"):
        summary[key] = _mean(chosen, key)
    summary["mrr"] = _mean(chosen, "reciprocal_rank")
    if any("hit_at_1_fused" in r for r in chosen):
        summary["rerank_gain_hit_at_1"] = round(
            summary["hit_at_1"] - _mean(chosen, "hit_at_1_fused"), 4)
        summary["rerank_gain_mrr"] = round(summary["mrr"] - _mean(chosen, "reciprocal_rank_fused"),
                                           4)
    summary["repetition_rate"] = _mean([{"r": float(r["repeated"])} for r in chosen], "r")
    summary["context_cut_rate"] = _mean([{"c": float(r.get("context_cut", False))}
                                         for r in chosen], "c")
    if any("abstained" in r for r in every):  # absent when scored on retrieval alone
        summary["abstain_recall"] = _mean([{"a": float(r["abstained"])} for r in refused], "a")
        summary["false_abstain_rate"] = _mean([{"a": float(r["abstained"])} for r in chosen],
                                              "a")
        answered = [r for r in every if not r["abstained"]]
        summary["unsupported_code_rate"] = _mean([{"u": float(bool(r["unsupported"]))}
                                                  for r in answered], "u")
        summary["invented_code_rate"] = _mean(
            [{"u": float(bool(r["unsupported"] or r.get("left_out")))} for r in answered], "u")
    for key in ("retrieval_ms", "time_to_first_token_ms", "decode_tok_s", "total_ms"):
        summary[f"median_{key}"] = _median(every, key)
    return {key: value for key, value in summary.items() if value is not None}
