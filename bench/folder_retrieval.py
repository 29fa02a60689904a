"""Retrieval of a built workspace on a question set and on its own probes, without the LLM:
`python -m bench.folder_retrieval QUESTIONS [--label NAME]`, run in a workspace where
`dvc repro build_index` has built data/embedder and data/index (issue 41 item 6: the PDF and
the HTML edition of the same manuals, each built on its own).

Prints one JSON line: hit@1, hit@k and MRR over every answerable question of the set (both
halves: nothing here is tuned), and the same for the known-item probes evaluate_rag derives
when a folder has no question set (`pipeline/evaluation/probes.py`, the settings of
questions/auto.yaml).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from types import SimpleNamespace

from pipeline import bundle, params_file
from pipeline.device.ask import open_retrieval
from pipeline.evaluation import probes, rag

AUTO = Path(__file__).resolve().parent.parent / "questions" / "auto.yaml"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("questions", type=Path)
    parser.add_argument("--label", default="")
    args = parser.parse_args(argv)
    cfg = params_file.load()
    retriever, chunks = open_retrieval(bundle.run_sources(Path(".")), cfg.retrieval)
    questions = [q for q in rag.read_questions(args.questions, {c.source for c in
                                                                chunks.values()})
                 if not q["unanswerable"]]
    depth = max(cfg.retrieval.candidates, rag.NDCG_DEPTH)
    records = rag.ask_all(SimpleNamespace(retriever=retriever, chunks=chunks), questions,
                          cfg.retrieval.k, depth, 0, answers=False)
    human = {key: round(sum(r[key] for r in records) / len(records), 4)
             for key in ("hit_at_1", "hit_at_k", "reciprocal_rank")}
    auto = probes.summarize(probes.evaluate(retriever, chunks, AUTO, cfg.retrieval.k, depth))
    print(json.dumps({"label": args.label, "corpus": cfg.corpus.path, "chunks": len(chunks),
                      "k": cfg.retrieval.k, "questions": len(records),
                      **{f"human_{key}": value for key, value in human.items()},
                      **{f"auto_{key}": value for key, value in auto.items()}}))


if __name__ == "__main__":
    main()
