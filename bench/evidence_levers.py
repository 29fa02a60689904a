"""Which sentence to quote: `python -m bench.evidence_levers [--half tune] [--sets a.jsonl,…]
[--answers]`.

For every answerable question of the sets, on the build in data/ (retrieval and the embedder
only, no generation: seconds), quotes the placed chunks' sentences as `answer.evidence` does,
once per lever: the weight of the question's own words in a sentence beside the embedder's
cosine, and how many sentences are embedded at all; what the embedder reads of a sentence (its
section's heading or the sentence before it prefixed: the quote stays the sentence); a prior for
the earlier-ranked source (the cosine minus `w` per place); with `--answers`, each question is
also answered once (the LLM: a minute a set) and the cosine with that answer, or the answer's
words in the sentence, weigh in. Prints `rag.evidence_hit_at_1` per lever and set: choose on
`tune`, report `test`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bench import built
from pipeline import params_file
from pipeline.device import answer
from pipeline.device.sentences import sentences
from pipeline.evaluation import rag
from pipeline.evaluation.expected import HEADING_SEPARATOR

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
CONTEXT_LEVERS = ("heading: sentence", "previous sentence + sentence")
RANK_PRIORS = (0.02, 0.05, 0.1)  # cosine minus this per place of the quote's source
ANSWER_WORD_WEIGHTS = (0.1, 0.3, 1.0)  # share of the answer's content words in the sentence


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.evidence_levers", description=__doc__)
    parser.add_argument("--half", choices=rag.SPLITS, default="tune")
    parser.add_argument("--sets", help="question sets (default: the build's rag_eval.questions)")
    parser.add_argument("--answers", action="store_true",
                        help="also weigh the cosine with the generated answer")
    args = parser.parse_args(argv)
    cfg = params_file.load()
    sources = built.documents()
    assistant = built.assistant(cfg.retrieval)
    embed = assistant.retriever.embedder.embed
    print(f"| lever | set | {args.half} questions | evidence hit@1 |\n|---|---|---:|---:|")
    for path in (args.sets or cfg.rag_eval.questions).split(","):
        questions = [q for q in rag.read_questions(Path(path), sources)
                     if q["split"] == args.half and not q["unanswerable"]]
        placed, headings = [], []
        for question in questions:
            keys = [key for key, _ in assistant.retriever.search(question["question"],
                                                                cfg.retrieval.k)]
            chunks = [assistant.chunks[key] for key in keys]
            placed.append([(c.source, c.start, c.text, "") for c in chunks])
            headings.append([c.heading for c in chunks])
        for name, (weight, embedded) in LEVERS.items():
            answer.QUOTE_CANDIDATES = embedded
            hits = [rag.evidence_hit(answer.evidence(q["question"], p, embed,
                                                     overlap_weight=weight), q)
                    for q, p in zip(questions, placed, strict=True)]
            _row(name, path, hits)
        answer.QUOTE_CANDIDATES = LEVERS["cosine"][1]
        for name in CONTEXT_LEVERS:
            hits = [rag.evidence_hit(answer.evidence(q["question"], p,
                                                     _in_context(embed, p, h, name)), q)
                    for q, p, h in zip(questions, placed, headings, strict=True)]
            _row(name, path, hits)
        for weight in RANK_PRIORS:
            hits = [rag.evidence_hit(_reranked(q["question"], p, embed,
                                               lambda quote, place, w=weight:
                                               quote.nearness - w * place), q)
                    for q, p in zip(questions, placed, strict=True)]
            _row(f"cosine - {weight} per source place", path, hits)
        if args.answers:
            given = [assistant.ask(q["question"], None, cfg.rag_eval.max_new_tokens,
                                   lambda piece: None) for q in questions]
            answered = [None if g.abstained else embed([g.answer])[0] for g in given]
            said = [set() if g.abstained else answer.content_words(g.answer) for g in given]
            asked = embed([q["question"] for q in questions])
            for name, weight in ANSWER_LEVERS.items():
                # cos(q, s) + w·cos(a, s) = (q + w·a)·s: the question's vector, moved.
                hits = [rag.evidence_hit(answer.evidence(
                            q["question"], p, embed,
                            question_vector=v if a is None else v + weight * a), q)
                        for q, p, v, a in zip(questions, placed, asked, answered, strict=True)]
                _row(name, path, hits)
            for weight in ANSWER_WORD_WEIGHTS:
                hits = [rag.evidence_hit(_reranked(
                            q["question"], p, embed,
                            lambda quote, place, w=weight, words=words: quote.nearness + w * len(
                                words & answer.content_words(quote.text)) / max(len(words), 1)),
                            q)
                        for q, p, words in zip(questions, placed, said, strict=True)]
                _row(f"+ {weight} answer words", path, hits)


def _in_context(embed, passages: list[tuple], headings: list[str], lever: str):
    """The embedder, reading each sentence of `passages` with its context prefixed (`lever`)."""
    context = {}
    for (_, _, text, _), heading in zip(passages, headings, strict=True):
        previous = ""
        for _, _, sentence in sentences(text):
            if lever.startswith("heading"):
                section = heading.split(HEADING_SEPARATOR)[-1].strip()
                context.setdefault(sentence, f"{section}: {sentence}" if section else sentence)
            else:
                context.setdefault(sentence, f"{previous} {sentence}".strip())
            previous = sentence
    return lambda texts: embed([context.get(t, t) for t in texts])


def _reranked(question: str, passages: list[tuple], embed, score) -> list:
    """Every quote `answer.evidence` would consider, put in order of `score(quote, place)`, the
    place being the rank of the source it is from (0 first)."""
    quotes = answer.evidence(question, passages, embed, most=answer.QUOTE_CANDIDATES)
    def place(quote) -> int:
        return next(n for n, (source, start, text, _) in enumerate(passages)
                    if source == quote.source and start <= quote.start < start + len(text) + 1)
    return sorted(quotes, key=lambda quote: -score(quote, place(quote)))


def _row(name: str, path: str, hits: list[float]) -> None:
    print(f"| {name} | {Path(path).stem} | {len(hits)} | "
          f"{sum(hits) / max(len(hits), 1):.3f} |", flush=True)


if __name__ == "__main__":
    from pipeline.errors import run

    run(main)
