"""Choosing "not in your documents": `python -m bench.abstention [--sets a.jsonl,b.jsonl]`.

Measures `abstain.signals` for every question of the sets (answerable and unanswerable, on the
built artifacts in data/; retrieval only, no generation: seconds), then searches the rule's
weights and threshold on the `tune` halves, pooled: the rule that refuses the most unanswerable
questions while refusing at most `MAX_FALSE_ABSTAIN` of the answerable ones, ties broken by the
wider margin. Prints the chosen rule as `retrieval.abstain` and its figures on both halves, per
set. The sets must share the build's corpus (each set is read against the build's chunks); to
choose one rule across corpora, measure each build with `--save rows.jsonl` and choose on them
together with `--pool a.jsonl,b.jsonl` (no build needed then).
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

from bench import built
from pipeline import params_file
from pipeline.device import abstain
from pipeline.device.answer import evidence
from pipeline.device.ask import Assistant
from pipeline.evaluation import rag

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
    parser.add_argument("--save", help="also write the measured rows here (JSONL)")
    parser.add_argument("--pool", help="choose on rows saved by --save instead of measuring")
    args = parser.parse_args(argv)
    if args.pool:
        rows = [json.loads(line) for path in args.pool.split(",")
                for line in Path(path).read_text().splitlines() if line.strip()]
    else:
        rows = _measure(args.sets)
    if args.save:
        Path(args.save).write_text("".join(json.dumps(r) + "\n" for r in rows))
    rule = choose([r for r in rows if r["split"] == "tune"])
    print(json.dumps({"abstain": {"below": rule.threshold, "dense_cosine": rule.dense_cosine,
                                  "keyword_agreement": rule.keyword_agreement,
                                  "coverage": rule.coverage,
                                  "evidence_cosine": rule.evidence_cosine}}))
    for name in sorted({r["set"] for r in rows}):
        for half in rag.SPLITS:
            chosen = [r for r in rows if r["split"] == half and r["set"] == name]
            recall, false = rates(rule, chosen)
            print(f"{name} {half}: abstain_recall {recall:.3f} "
                  f"({sum(r['unanswerable'] for r in chosen)} unanswerable), false_abstain_rate "
                  f"{false:.3f} ({sum(not r['unanswerable'] for r in chosen)} answerable)")


def _measure(sets: str | None) -> list[dict]:
    """The signals of every question of `sets` on the build in data/, each row named by its
    set's file name."""
    cfg = params_file.load()
    sources = built.documents()
    paths = sets.split(",") if sets else [cfg.rag_eval.questions]
    assistant = built.assistant(cfg.retrieval)
    rows = []
    for path in paths:
        questions = rag.read_questions(Path(path), sources)
        rows += [{"set": Path(path).stem, **row}
                 for row in measured(assistant, questions, cfg.retrieval.k)]
    return rows


if __name__ == "__main__":
    from pipeline.errors import run

    run(main)
