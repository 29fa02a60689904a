"""What keeps answers from looping: `python -m bench.answer_levers [--half tune] [--levers …]`.

Runs evaluate_rag's own loop (`rag.ask_all` over `ask.Assistant`) on the built artifacts in
data/ once per lever (the system line, a worked example in it, the question asked before the
sources too, how many chunks the prompt gets, the generation length, stopping at the end of
the first complete answer or after a number of sentences, leaving out sentences that name code
no source says, the sources' nearest example in place of an invented block) and prints one row
per lever: choose on `tune`, report
`test`. Greedy decoding throughout: the stock runner's only sampling setting is a temperature,
and a sampled answer is not reproducible.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from bench import built
from pipeline import params_file
from pipeline.device import ask, prompt
from pipeline.evaluation import rag

COLUMNS = ("repetition_rate", "answer_terms_recall", "answer_f1", "grounded",
           "unsupported_code_rate", "invented_code_rate", "median_total_ms")
# The system line before this bench (kept to measure against).
OLD_SYSTEM = ("Answer from the numbered sources only and cite them like [1]; if they lack it, "
              "say so.")
BRIEF = ("Answer the question in one or two sentences, from the numbered sources only, and "
         "cite them like [1].")
# A worked example on a topic no project corpus covers, written for this bench.
EXAMPLE = (BRIEF + "\n\nExample.\nSources:\n[1] Tides\nThe tide rises and falls twice a day "
           "because of the Moon's pull.\nQuestion: How often does the tide rise?\nAnswer: "
           "Twice a day, pulled by the Moon [1].")


@dataclass(frozen=True)
class Lever:
    system: str
    first_answer: bool
    max_new_tokens: int | None = None  # None: the build's rag_eval.max_new_tokens
    most_sentences: int | None = None  # end the answer after this many sentences
    vet_sentences: bool = True  # leave out a sentence naming code no source says
    prompt_chunks: int | None = 4  # the chunks the LLM reads (None: the build's setting)
    question_first: bool = False  # ask the question before the sources as well as after
    documents_examples: bool = False  # an invented block gives way to the sources' example


LEVERS = {
    "before": Lever(OLD_SYSTEM, False),
    "short_generation_48": Lever(OLD_SYSTEM, False, 48),
    "first_answer": Lever(OLD_SYSTEM, True),
    "brief_system": Lever(BRIEF, False),
    "brief_system+first_answer": Lever(BRIEF, True),
    "example+first_answer": Lever(EXAMPLE, True),
    "shipped_before_sentence_vetting": Lever(prompt.SYSTEM, True, vet_sentences=False),
    "two_sentences": Lever(prompt.SYSTEM, True, most_sentences=2),
    "three_sentences": Lever(prompt.SYSTEM, True, most_sentences=3),
    "shipped": Lever(prompt.SYSTEM, True, most_sentences=ask.MOST_SENTENCES, prompt_chunks=None,
                     documents_examples=True),
    "shipped_before_documents_examples": Lever(prompt.SYSTEM, True,
                                               most_sentences=ask.MOST_SENTENCES,
                                               prompt_chunks=None),
    "two_passages": Lever(prompt.SYSTEM, True, most_sentences=ask.MOST_SENTENCES,
                          prompt_chunks=2),
    "three_passages": Lever(prompt.SYSTEM, True, most_sentences=ask.MOST_SENTENCES,
                            prompt_chunks=3),
    "question_first": Lever(prompt.SYSTEM, True, most_sentences=ask.MOST_SENTENCES,
                            question_first=True),
    "one_passage": Lever(prompt.SYSTEM, True, most_sentences=ask.MOST_SENTENCES,
                         prompt_chunks=1),
    "two_passages+question_first": Lever(prompt.SYSTEM, True, most_sentences=ask.MOST_SENTENCES,
                                         prompt_chunks=2, question_first=True),
    "three_passages+question_first": Lever(prompt.SYSTEM, True,
                                           most_sentences=ask.MOST_SENTENCES, prompt_chunks=3,
                                           question_first=True),
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.answer_levers", description=__doc__)
    parser.add_argument("--half", choices=rag.SPLITS, default="tune")
    parser.add_argument("--levers", default=",".join(LEVERS))
    args = parser.parse_args(argv)
    cfg = params_file.load()
    sources = built.documents()
    questions = [q for q in rag.read_questions(Path(cfg.rag_eval.questions), sources)
                 if q["split"] == args.half]
    assistant = built.assistant(cfg.retrieval)
    built_prompt_chunks = cfg.retrieval.prompt_chunks  # the levers below change it in place
    print(f"| lever | {args.half} questions | " + " | ".join(COLUMNS) + " |")
    print("|---|---:|" + "---:|" * len(COLUMNS))
    for name in args.levers.split(","):
        lever = LEVERS[name]
        assistant.chat.system, assistant.first_answer = lever.system, lever.first_answer
        assistant.most_sentences, assistant.vet_sentences = (lever.most_sentences,
                                                             lever.vet_sentences)
        assistant.chat.question_first = lever.question_first
        assistant.documents_examples = lever.documents_examples
        assistant.retriever.cfg.prompt_chunks = lever.prompt_chunks or built_prompt_chunks
        records = rag.ask_all(assistant, questions, cfg.retrieval.k,
                              max(cfg.retrieval.candidates, rag.NDCG_DEPTH),
                              lever.max_new_tokens or cfg.rag_eval.max_new_tokens)
        row = rag.summarize(records, args.half)
        print(f"| {name} | {row['questions']} | "
              + " | ".join(f"{row.get(c, '—')}" for c in COLUMNS) + " |", flush=True)


if __name__ == "__main__":
    from pipeline.errors import run

    run(main)
