"""Which sentence to quote: `python -m bench.evidence_levers [--half tune] [--sets a.jsonl,…]
[--answers]`.

For every answerable question of the sets, on the build in data/ (retrieval and the embedder
only, no generation: seconds), quotes the placed chunks' sentences as `answer.evidence` does,
once per lever: the weight of the question's own words in a sentence beside the embedder's
cosine, and how many sentences are embedded at all; with `--answers`, each question is also
answered once (the LLM: a minute a set) and the cosine with that answer weighs in. Prints
`rag.evidence_hit_at_1` per lever and set: choose on `tune`, report `test`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from pipeline import bundle, layout, params_file
from pipeline.device import answer
from pipeline.device.ask import Assistant
from pipeline.evaluation import rag
from pipeline.retrieval.corpus import read_chunks

LEVERS = {  # (overlap weight, sentences embedded)
    "cosine": (0.0, answer.QUOTE_CANDIDATES),
    "cosine, every sentence": (0.0, 10_000),
    "cosine + 0.1 overlap": (0.1, answer.QUOTE_CANDIDATES),
    "cosine + 0.2 overlap": (0.2, answer.QUOTE_CANDIDATES),
    "cosine + 0.4 overlap": (0.4, answer.QUOTE_CANDIDATES),
    "shipped": (answer.OVERLAP_WEIGHT, answer.QUOTE_CANDIDATES),
}
ANSWER_LEVERS = {"+ 0.5 answer cosine": 0.5, "+ 1.0 answer cosine": 1.0,
                 "answer cosine alone (x10)": 10.0}  # weight beside the question's cosine


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.evidence_levers", description=__doc__)
    parser.add_argument("--half", choices=rag.SPLITS, default="tune")
    parser.add_argument("--sets", help="question sets (default: the build's rag_eval.questions)")
    parser.add_argument("--answers", action="store_true",
                        help="also weigh the cosine with the generated answer")
    args = parser.parse_args(argv)
    cfg = params_file.load()
    sources = {c.source for c in read_chunks(Path(layout.INDEX) / layout.CHUNKS)}
    assistant = Assistant(bundle.run_sources(Path(".")), cfg.retrieval)
    embed = assistant.retriever.embedder.embed
    print(f"| lever | set | {args.half} questions | evidence hit@1 |\n|---|---|---:|---:|")
    for path in (args.sets or cfg.rag_eval.questions).split(","):
        questions = [q for q in rag.read_questions(Path(path), sources)
                     if q["split"] == args.half and not q["unanswerable"]]
        placed = []
        for question in questions:
            keys = [key for key, _ in assistant.retriever.search(question["question"],
                                                                cfg.retrieval.k)]
            placed.append([(c.source, c.start, c.text, "")
                           for c in (assistant.chunks[key] for key in keys)])
        for name, (weight, embedded) in LEVERS.items():
            answer.QUOTE_CANDIDATES = embedded
            hits = [rag.evidence_hit(answer.evidence(q["question"], p, embed,
                                                     overlap_weight=weight), q)
                    for q, p in zip(questions, placed, strict=True)]
            _row(name, path, hits)
        answer.QUOTE_CANDIDATES = LEVERS["cosine"][1]
        if args.answers:
            answered = [_answer_vector(assistant, q["question"], cfg.rag_eval.max_new_tokens,
                                       embed) for q in questions]
            asked = embed([q["question"] for q in questions])
            for name, weight in ANSWER_LEVERS.items():
                # cos(q, s) + w·cos(a, s) = (q + w·a)·s: the question's vector, moved.
                hits = [rag.evidence_hit(answer.evidence(
                            q["question"], p, embed,
                            question_vector=v if a is None else v + weight * a), q)
                        for q, p, v, a in zip(questions, placed, asked, answered, strict=True)]
                _row(name, path, hits)


def _row(name: str, path: str, hits: list[float]) -> None:
    print(f"| {name} | {Path(path).stem} | {len(hits)} | "
          f"{sum(hits) / max(len(hits), 1):.3f} |", flush=True)


def _answer_vector(assistant: Assistant, question: str, max_new_tokens: int,
                   embed) -> np.ndarray | None:
    """The embedder's unit vector of the answer `ask` gives (None when it abstains)."""
    given = assistant.ask(question, None, max_new_tokens, lambda piece: None)
    return None if given.abstained else embed([given.answer])[0]


if __name__ == "__main__":
    from pipeline.errors import run

    run(main)
