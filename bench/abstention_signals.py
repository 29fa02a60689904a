"""Which signals tell an answerable question from one the documents do not answer:
`python -m bench.abstention_signals [--sets a.jsonl,…] [--likelihood]`.

For every question of the sets, on the build in data/, measures the signals the shipped rule
weighs (`abstain.signals`, their weighted `score`) and signals it does not:
- `dense_margin`: the nearest chunk's cosine minus the 50th's (how far the best stands out);
- `uncovered`: minus the most any one question word's removal raises the question's cosine with
  its nearest quoted sentence ("the sources say all of it but that word");
- `question_pmi` (`--likelihood`, the LLM `.pte`, a second a question): how much more likely
  the LLM finds the question's tokens after the first placed chunk than after nothing, mean
  log-probability per token (a model reading the question and the passage together).
Prints each signal's AUC per set: the chance an answerable question scores above an
unanswerable one (0.5 says nothing; a rule's threshold also has to carry across corpora, which
`bench.abstention` measures).
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import numpy as np

from bench import built
from bench.abstention import measured
from pipeline import bundle, params_file
from pipeline.device import abstain
from pipeline.device.answer import evidence
from pipeline.device.ask import Assistant
from pipeline.device.retrieve import STOPWORDS
from pipeline.evaluation import rag

MARGIN_DEPTH = 50
PASSAGE_TOKENS = 300  # of the first placed chunk, before the question
_WORD = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_./-]*")


def auc(answerable: list[float], unanswerable: list[float]) -> float:
    """P(an answerable question's score > an unanswerable one's), ties counted half."""
    if not answerable or not unanswerable:
        return float("nan")
    wins = sum((a > u) + 0.5 * (a == u) for a in answerable for u in unanswerable)
    return wins / (len(answerable) * len(unanswerable))


def dense_margin(assistant: Assistant, question: str) -> float:
    found = assistant.retriever.index.search(assistant.retriever.query_vector(question),
                                             MARGIN_DEPTH)
    return float(found.distances[-1] - found.distances[0])  # distances are 1 - cosine


def uncovered(assistant: Assistant, question: str, quote: str) -> float:
    embed = assistant.retriever.embedder.embed
    words = [m for m in _WORD.finditer(question)
             if len(m.group()) >= 3 and m.group().lower() not in STOPWORDS]
    if not words or not quote:
        return 0.0
    vectors = embed([quote, question, *(question[:m.start()] + question[m.end():]
                                        for m in words)])
    near = vectors[1:] @ vectors[0]
    return -float(np.max(near[1:]) - near[0])


class QuestionLikelihood:
    """log p(question | passage) - log p(question), per token, by the build's LLM `.pte`."""

    def __init__(self, files: dict[str, Path]) -> None:
        from tokenizers import Tokenizer

        from pipeline.evaluation.scorers import RuntimeScorer

        self.tokenizer = Tokenizer.from_file(str(files[bundle.TOKENIZER]))
        self.scorer = RuntimeScorer(files[bundle.LLM])

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def __call__(self, question: str, passage: str) -> float:
        from pipeline.evaluation.scorers import target_logprobs

        asked = self._ids(" " + question)
        context = self._ids(passage)[:PASSAGE_TOKENS] + self._ids("\n\nQuestion:")
        alone = self._ids("Question:")
        given = target_logprobs(self.scorer, context + asked, len(context))
        prior = target_logprobs(self.scorer, alone + asked, len(alone))
        return float((given - prior).mean())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.abstention_signals",
                                     description=__doc__)
    parser.add_argument("--sets", help="question sets (default: the build's rag_eval.questions)")
    parser.add_argument("--likelihood", action="store_true",
                        help="also the LLM's question likelihood given the first chunk")
    args = parser.parse_args(argv)
    cfg = params_file.load()
    sources = built.documents()
    files = bundle.run_sources(Path("."))
    assistant = Assistant(files, cfg.retrieval)
    likelihood = QuestionLikelihood(files) if args.likelihood else None
    shipped = abstain.rule(cfg.retrieval)
    print("| signal | set | answerable | unanswerable | AUC |\n|---|---|---:|---:|---:|")
    for path in (args.sets or cfg.rag_eval.questions).split(","):
        questions = rag.read_questions(Path(path), sources)
        rows = measured(assistant, questions, cfg.retrieval.k)
        for question, row in zip(questions, rows, strict=True):
            text = question["question"]
            keys = [key for key, _ in assistant.retriever.search(text, cfg.retrieval.k)]
            chunks = [assistant.chunks[key] for key in keys]
            quotes = evidence(text, [(c.source, c.start, c.text, "") for c in chunks],
                              assistant.retriever.embedder.embed, most=1)
            if shipped is not None:
                row["rule_score"] = shipped.score(row)
            row["dense_margin"] = dense_margin(assistant, text)
            row["uncovered"] = uncovered(assistant, text, quotes[0].text if quotes else "")
            if likelihood is not None:
                row["question_pmi"] = likelihood(text, chunks[0].text) if chunks else 0.0
        for signal in (s for s in rows[0] if s not in ("split", "unanswerable")):
            answerable = [r[signal] for r in rows if not r["unanswerable"]]
            refused = [r[signal] for r in rows if r["unanswerable"]]
            print(f"| {signal} | {Path(path).stem} | {len(answerable)} | {len(refused)} | "
                  f"{auc(answerable, refused):.2f} |", flush=True)


if __name__ == "__main__":
    from pipeline.errors import run

    run(main)
