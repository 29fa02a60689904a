"""A sweep's rows: the columns each job records, `results.csv`, and what Optuna minimizes."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from typing import Any

from pipeline import layout
from pipeline.experiments import pareto

RESULTS = "results.csv"
# Artifact hashes each row keeps, read from the artifact's manifest: column -> (directory, file).
HASHES = {"llm_pte_sha256": (layout.LOWERED, layout.LLM_PTE),
          "index_sha256": (layout.INDEX, layout.INDEX_FILE)}
FIRST_COLUMNS = ("job", "experiment", "status", "reason", "overrides", "quant", "backend",
                 "stages_run", "wall_s", "worker")
# What a job returns to Hydra, in the order of `direction` in conf/hydra/sweeper/optuna_pareto.yaml.
OBJECTIVES = (pareto.DELTA, pareto.SIZE)


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested metrics as dotted columns: {"llm": {"ppl": 9.1}} -> {"llm.ppl": 9.1}."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = json.dumps(value) if isinstance(value, list) else value
    return flat


def results_csv(rows: list[dict[str, Any]]) -> str:
    """One row per job: its identity and status, every metric (sorted), then artifact hashes."""
    metrics = sorted({key for row in rows for key in row} - set(FIRST_COLUMNS) - set(HASHES))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=[*FIRST_COLUMNS, *metrics, *HASHES], restval="",
                            lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def objectives(row: dict[str, Any]) -> tuple[float, ...] | None:
    """What Optuna minimizes; None for a failed job, which Optuna then records as a failed trial."""
    if row.get("status") != "ok":
        return None
    return tuple(float(row[key]) for key in OBJECTIVES)


def artifact_hashes(read_manifest: Callable[[str], dict[str, Any]]) -> dict[str, str]:
    """The hashed artifacts' sha256 from their manifests; `read_manifest(folder)` reads one
    wherever the run is (a DVC experiment's fs, a worker's clone)."""
    return {column: read_manifest(folder)["files"][file]["sha256"]
            for column, (folder, file) in HASHES.items()}
