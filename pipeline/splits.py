"""Held-out text for calibration and evaluation, split so the two never share a document.

The default source is Python's language reference (`pydoc_data.topics`): English that no one
here wrote. Each topic goes wholly to one side, chosen by a seeded hash of its name, so the split
is deterministic and independent of dictionary order or Python's hash seed.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from pipeline.config import CalibrationConfig
from pipeline.errors import BadInput


def pydoc_topics() -> dict[str, str]:
    from pydoc_data.topics import topics

    return {name: text.strip() for name, text in topics.items() if text.strip()}


SOURCES = {"pydoc_topics": pydoc_topics}


def _goes_to_eval(name: str, seed: int, fraction: float) -> bool:
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def split(cfg: CalibrationConfig) -> tuple[list[dict], list[dict]]:
    documents = SOURCES[cfg.source]()
    calibration, evaluation = [], []
    for name in sorted(documents):
        record = {"id": name, "text": documents[name]}
        (evaluation if _goes_to_eval(name, cfg.seed, cfg.eval_fraction) else calibration).append(
            record
        )
    if not calibration or not evaluation:
        raise BadInput(
            f"calibration.eval_fraction={cfg.eval_fraction} leaves one side of the split empty."
        )
    return calibration, evaluation


def write_jsonl(path: Path, records: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n")


def read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]
