"""Choosing "not in your documents": `python -m bench.abstention [--sets a.jsonl,b.jsonl]`.

Measures `abstain.signals` for every question of the sets (answerable and unanswerable, on the
built artifacts in data/; retrieval only, no generation: seconds), then searches the rule's
weights and threshold on the `tune` halves, pooled: the rule that refuses the most unanswerable
questions while refusing at most `MAX_FALSE_ABSTAIN` of the answerable ones, ties broken by the
wider margin. Prints the chosen rule as `retrieval.abstain` and its figures on both halves. The
sets must share the build's corpus (each set is read against the build's chunks).
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

from pipeline import bundle, layout, params_file
from pipeline.device import abstain
from pipeline.device.answer import evidence
from pipeline.device.ask import Assistant
from pipeline.evaluation import rag
from pipeline.retrieval.corpus import read_chunks

MAX_FALSE_ABSTAIN = 0.1
WEIGHTS = (0.0, 0.5, 1.0)


def measured(assistant: Assistant, questions: list[dict], k: int) -> list[dict]:
    rows = []
    for question in questions:
        keys = [key for key, _ in assistant.retriever.search(question["question"], k)]
        chunks = [assistant.chunks[key] for key in keys]
        quoted = evidence(question["question"], [(c.source, c.start, c.text, "") for c in chunks],
                          assistant.retriever.embedder.embed)
        rows.append({"split": question["split"], "unanswerable": question["unanswerable"],
                     **abstain.signals(assistant.retriever, question["question"], keys,
                                       [c.text for c in chunks],
                                       quoted[0].nearness if quoted else 0.0)})
    return rows


def rates(rule: abstain.Rule, rows: list[dict]) -> tuple[float, float]:
    """(abstain recall, false-abstain rate) of `rule` on `rows`."""
    refused = [rule.abstains(r) for r in rows if r["unanswerable"]]
    wrong = [rule.abstains(r) for r in rows if not r["unanswerable"]]
    return (sum(refused) / len(refused) if refused else 0.0,
            sum(wrong) / len(wrong) if wrong else 0.0)


def choose(rows: list[dict]) -> abstain.Rule:
    best: tuple[float, float, abstain.Rule] | None = None
    for weights in itertools.product(WEIGHTS, repeat=4):
        if not any(weights):
            continue
        probe = abstain.Rule(*weights, threshold=0.0)
        scores = sorted({round(probe.score(r), 4) for r in rows})
        for low, high in itertools.pairwise([0.0, *scores]):
            rule = abstain.Rule(*weights, threshold=round((low + high) / 2, 4))
            recall, false = rates(rule, rows)
            if false <= MAX_FALSE_ABSTAIN and (best is None or recall > best[0]
                                               or (recall == best[0] and high - low > best[1])):
                best = (recall, high - low, rule)
    assert best is not None
    return best[2]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.abstention", description=__doc__)
    parser.add_argument("--sets", help="question sets (default: the build's rag_eval.questions)")
    args = parser.parse_args(argv)
    cfg = params_file.load()
    sources = {c.source for c in read_chunks(Path(layout.INDEX) / layout.CHUNKS)}
    paths = args.sets.split(",") if args.sets else [cfg.rag_eval.questions]
    questions = [q for path in paths for q in rag.read_questions(Path(path), sources)]
    assistant = Assistant(bundle.run_sources(Path(".")), cfg.retrieval)
    rows = measured(assistant, questions, cfg.retrieval.k)
    rule = choose([r for r in rows if r["split"] == "tune"])
    print(json.dumps({"abstain": {"below": rule.threshold, "dense_cosine": rule.dense_cosine,
                                  "keyword_agreement": rule.keyword_agreement,
                                  "coverage": rule.coverage,
                                  "evidence_cosine": rule.evidence_cosine}}))
    for half in rag.SPLITS:
        chosen = [r for r in rows if r["split"] == half]
        recall, false = rates(rule, chosen)
        print(f"{half}: abstain_recall {recall:.3f} ({sum(r['unanswerable'] for r in chosen)} "
              f"unanswerable), false_abstain_rate {false:.3f} "
              f"({sum(not r['unanswerable'] for r in chosen)} answerable)")


if __name__ == "__main__":
    from pipeline.errors import run

    run(main)
