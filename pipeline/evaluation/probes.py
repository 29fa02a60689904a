"""Known-item probes: retrieval questions a build derives from its own corpus, for a folder
nobody wrote a question set for (`rag_eval.questions: questions/auto.yaml`; reported as
`rag_auto.*`, never mixed with a human-written set).

A seeded sample of chunks each gives one probe: a sentence of the chunk, or its section's
heading path (without the file name). A probe that could find itself would say nothing, so what
it asks is taken out first: the sentence from every chunk holding it, the heading from every
chunk of its section, in a copy of the release's two indexes (the keyword store in memory, the
usearch index copied, the changed chunks re-embedded by the embedder `.pte`). The probe then
must retrieve one of the chunks it was taken from. It measures whether retrieval finds the
passage a text is about (what a broken extraction, a wrong embedder or a stale index loses),
not whether the model answers well: a folder with no question set has no reference answers.
"""

from __future__ import annotations

import random
import sqlite3
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from pipeline.device.answer import content_words
from pipeline.device.retrieve import Retriever
from pipeline.device.sentences import sentences
from pipeline.errors import BadInput
from pipeline.evaluation.expected import HEADING_SEPARATOR
from pipeline.progress import bar
from pipeline.retrieval.corpus import Chunk, embedding_text

MIN_WORDS, MAX_WORDS = 8, 60  # a sentence probe: long enough to be about something
MAX_SECTION_CHUNKS = 12  # a heading probe only for sections short enough to be one topic
SETTINGS = {"probes": 40, "seed": 0}
SUFFIXES = (".yaml", ".yml")  # `rag_eval.questions` naming a probe file, not a question set


@dataclass(frozen=True)
class Probe:
    query: str
    kind: str  # "sentence" or "heading"
    keys: tuple[int, ...]  # the chunks it was taken from: any of them is a hit
    taken: str  # the text taken out of them (the sentence as the chunks hold it)


def settings(path: Path) -> dict[str, int]:
    """The probe file's settings (`probes`, `seed`), checked."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        raise BadInput(f"rag_eval.questions={str(path)!r} is not a readable YAML file.") from None
    if not isinstance(raw, dict) or set(raw) - set(SETTINGS):
        raise BadInput(f"{path} may set only {', '.join(SETTINGS)}.")
    chosen = {**SETTINGS, **raw}
    if not all(isinstance(v, int) and v >= 0 for v in chosen.values()) or chosen["probes"] < 1:
        raise BadInput(f"{path}: probes must be a whole number ≥ 1 and seed ≥ 0.")
    return chosen


def _topic(heading: str) -> str:
    """A heading path without its file name: what a reader would ask about."""
    parts = [p.strip() for p in heading.split(HEADING_SEPARATOR)][1:]
    return " ".join(p for p in parts if p)


def _sentence(chunk: Chunk, rng: random.Random) -> tuple[str, str] | None:
    """A sentence of the chunk as a query (on one line) and as the chunk holds it."""
    fit = [(text, chunk.text[begin:end]) for begin, end, text in sentences(chunk.text)
           if MIN_WORDS <= len(content_words(text)) and len(text.split()) <= MAX_WORDS]
    return rng.choice(fit) if fit else None


def derive(chunks: list[Chunk], count: int, seed: int) -> list[Probe]:
    """Up to `count` probes from distinct chunks, the same for the same chunks and seed:
    heading probes where the section is short and its heading says something, else sentences."""
    rng = random.Random(seed)
    sections: dict[str, list[int]] = {}
    for chunk in chunks:
        if chunk.heading:
            sections.setdefault(chunk.heading, []).append(chunk.key)
    probes: list[Probe] = []
    taken_sections: set[str] = set()
    for chunk in rng.sample(chunks, len(chunks)):
        if len(probes) == count:
            break
        topic = _topic(chunk.heading)
        wants_heading = len(probes) % 2 == 1 and chunk.heading not in taken_sections
        if (wants_heading and len(content_words(topic)) >= 2
                and len(sections[chunk.heading]) <= MAX_SECTION_CHUNKS):
            taken_sections.add(chunk.heading)
            probes.append(Probe(topic, "heading", tuple(sections[chunk.heading]),
                                chunk.heading))
            continue
        picked = _sentence(chunk, rng)
        if picked is not None:
            query, held = picked
            holders = tuple(c.key for c in chunks if held in c.text)
            probes.append(Probe(query, "sentence", holders, held))
    return probes


def masked(chunks: dict[int, Chunk], probes: list[Probe]) -> dict[int, Chunk]:
    """The chunks the probes were taken from, with what each probe asks taken out."""
    changed: dict[int, Chunk] = {}
    for probe in probes:
        for key in probe.keys:
            chunk = changed.get(key, chunks[key])
            if probe.kind == "sentence":
                chunk = replace(chunk, text=chunk.text.replace(probe.taken, " "))
            else:
                chunk = replace(chunk, heading="", embeds_heading=False)
            changed[key] = chunk
    return changed


def retriever_without(retriever: Retriever, changed: dict[int, Chunk]) -> Retriever:
    """A retriever over copies of `retriever`'s indexes in which `changed` replaces those
    chunks (the release's files are never written)."""
    db = sqlite3.connect(":memory:")
    retriever.db.backup(db)
    for key, chunk in changed.items():
        old = db.execute("SELECT heading, text FROM chunks WHERE key = ?", (key,)).fetchone()
        db.execute("INSERT INTO chunks_fts(chunks_fts, rowid, heading, text) "
                   "VALUES ('delete', ?, ?, ?)", (key, *old))
        db.execute("UPDATE chunks SET heading = ?, text = ? WHERE key = ?",
                   (chunk.heading, chunk.text, key))
        db.execute("INSERT INTO chunks_fts(rowid, heading, text) VALUES (?, ?, ?)",
                   (key, chunk.heading, chunk.text))
    index = retriever.index.copy()
    keys = sorted(changed)
    if keys:
        index.remove(keys)
        index.add(keys, retriever.embedder.embed([embedding_text(changed[k]) for k in keys]))
    copy = replace(retriever, index=index)
    copy.db = db
    return copy


def score(retriever: Retriever, probes: list[Probe], k: int, depth: int) -> list[dict[str, Any]]:
    """One record per probe: whether the chunks it was taken from come first, or among `k`."""
    records = []
    for probe in bar(probes, desc="probes", unit="q"):
        ranked = [key for key, _ in retriever.search(probe.query, depth, None)]
        first = next((n for n, key in enumerate(ranked, start=1) if key in probe.keys), None)
        records.append({"question": probe.query, "kind": probe.kind, "expect": list(probe.keys),
                        "retrieved": ranked[:k], "hit_at_1": float(first == 1),
                        "hit_at_k": float(first is not None and first <= k),
                        "reciprocal_rank": 1.0 / first if first else 0.0})
    return records


def evaluate(retriever: Retriever, chunks: dict[int, Chunk], path: Path, k: int,
             depth: int) -> list[dict[str, Any]]:
    """The probe file's probes derived, taken out of a copy of the indexes and scored: what
    evaluate_rag reports as `rag_auto.*` (and bench/folder_retrieval beside a question set)."""
    chosen = settings(path)
    derived = derive(list(chunks.values()), chosen["probes"], chosen["seed"])
    if not derived:
        raise BadInput("the corpus has no sentence or heading long enough to probe retrieval "
                       "with; write a question set (rag_eval.questions=…).")
    return score(retriever_without(retriever, masked(chunks, derived)), derived, k, depth)


def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
    """`rag_auto.*`: the probes' hit@1, hit@k and MRR, overall and by kind."""
    def mean(rows: list[dict], key: str) -> float:
        return round(sum(r[key] for r in rows) / len(rows), 4) if rows else 0.0

    summary: dict[str, Any] = {"probes": len(records), "hit_at_1": mean(records, "hit_at_1"),
                               "hit_at_k": mean(records, "hit_at_k"),
                               "mrr": mean(records, "reciprocal_rank")}
    for kind in ("sentence", "heading"):
        rows = [r for r in records if r["kind"] == kind]
        summary[f"{kind}_probes"] = len(rows)
        if rows:
            summary[f"{kind}_hit_at_k"] = mean(rows, "hit_at_k")
    return summary
