"""Retrieval settings compared on answers: `python -m bench.rag_modes [--modes …] [OVERRIDES…]`.

Runs evaluate_rag's own loop (`pipeline.evaluation.rag.ask_all` over `ask.Assistant`) on the
built artifacts in data/ once per retrieval mode (dense, keyword, hybrid by default; Hydra-style
`retrieval.*` overrides apply to all) and prints one row per mode and half: choose on `tune`,
report `test`. The build's params.yaml supplies the question set and generation length;
`--retrieval-only` skips generation, for searching retrieval settings quickly.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from bench import built
from pipeline import params_file
from pipeline.evaluation import rag

COLUMNS = ("hit_at_1", "hit_at_k", "mrr", "ndcg_at_10", "answer_terms_recall", "grounded",
           "repetition_rate", "median_retrieval_ms", "median_time_to_first_token_ms",
           "median_decode_tok_s", "median_total_ms")


def _settings(overrides: list[str]) -> dict[str, float | int]:
    pairs = (o.removeprefix("retrieval.").split("=", 1) for o in overrides)
    return {key: (float(value) if "." in value else int(value)) for key, value in pairs}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.rag_modes", description=__doc__)
    parser.add_argument("--modes", default="dense,keyword,hybrid")
    parser.add_argument("--retrieval-only", action="store_true",
                        help="score retrieval alone (no generation: seconds, not minutes)")
    parser.add_argument("overrides", nargs="*", help="retrieval.KEY=VALUE for every mode")
    args = parser.parse_args(argv)
    cfg = params_file.load()
    sources = built.documents()
    questions = rag.read_questions(Path(cfg.rag_eval.questions), sources)
    base = dataclasses.replace(cfg.retrieval, **_settings(args.overrides))
    assistant = built.assistant(base)
    print("| mode | half | " + " | ".join(COLUMNS) + " |")
    print("|---|---|" + "---:|" * len(COLUMNS))
    for mode in args.modes.split(","):
        retrieval = dataclasses.replace(base, mode=mode)
        assistant.retriever.cfg = retrieval
        records = rag.ask_all(assistant, questions, retrieval.k,
                              max(retrieval.candidates, rag.NDCG_DEPTH),
                              cfg.rag_eval.max_new_tokens, answers=not args.retrieval_only)
        for half in rag.SPLITS:
            row = rag.summarize(records, half)
            print(f"| {mode} | {half} ({row['questions']}) | "
                  + " | ".join(f"{row.get(c, '—')}" for c in COLUMNS) + " |", flush=True)


if __name__ == "__main__":
    from pipeline.errors import run

    run(main)
