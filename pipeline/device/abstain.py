"""When the documents do not answer: the signals, and the rule that says "not in your documents".

Retrieval always returns its nearest chunks, answerable or not; what differs is how near they
are and whether the two indexes agree. Per question, `signals` measures:
- `dense_cosine`: the question's cosine with its nearest chunk (the embedder `.pte`);
- `keyword_agreement`: the share of the prompt's chunks that BM25 (FTS5) also ranks among its
  `candidates` best: the question's own words are in them;
- `coverage`: the share of the question's content words that occur in the placed sources;
- `evidence_cosine`: the cosine of the question with the nearest sentence of the placed sources
  (the top evidence quote's `nearness`): a sentence that answers is nearer than a chunk.
`Rule.abstains` combines them into one score against a threshold chosen on the tune half (the
weights and the threshold: bench/abstention.py, the figures in its docstring).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pipeline.device.answer import content_words
from pipeline.device.retrieve import keyword_search

ABSTENTION = "The documents do not say; these are the closest sources."


def signals(retriever: Any, question: str, placed: list[int], sources: list[str],
            evidence_cosine: float) -> dict[str, float]:
    """The signals of the module docstring for one asked question."""
    matches = retriever.index.search(retriever.query_vector(question), 1)
    cosine = 1.0 - float(matches.distances[0]) if len(matches) else 0.0
    keyword = set(keyword_search(retriever.db, question, retriever.cfg.candidates))
    agreement = sum(key in keyword for key in placed) / len(placed) if placed else 0.0
    wanted = content_words(question)
    found = content_words("\n".join(sources))
    coverage = len(wanted & found) / len(wanted) if wanted else 1.0
    return {"dense_cosine": round(cosine, 4), "keyword_agreement": round(agreement, 4),
            "coverage": round(coverage, 4), "evidence_cosine": round(evidence_cosine, 4)}


@dataclass(frozen=True)
class Rule:
    """Abstain when the weighted sum of the signals is below `threshold`."""

    dense_cosine: float
    keyword_agreement: float
    coverage: float
    evidence_cosine: float
    threshold: float

    def score(self, measured: dict[str, float]) -> float:
        return (self.dense_cosine * measured["dense_cosine"]
                + self.keyword_agreement * measured["keyword_agreement"]
                + self.coverage * measured["coverage"]
                + self.evidence_cosine * measured["evidence_cosine"])

    def abstains(self, measured: dict[str, float]) -> bool:
        return self.score(measured) < self.threshold


def rule(cfg: Any) -> Rule | None:
    """The release's rule (`retrieval.abstain`), or None when it never abstains."""
    a = cfg.abstain
    return (Rule(a.dense_cosine, a.keyword_agreement, a.coverage, a.evidence_cosine, a.below)
            if a.below > 0 else None)
