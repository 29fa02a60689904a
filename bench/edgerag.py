"""edgerag's build cost, read from the run records its stages wrote while building the `.pte`.

The chain is followed from `lowered/manifest.json` through each manifest's `inputs` hashes, so a
figure is only reported when every manifest on the way still describes the files on disk and
each stage's run record (`runs/<stage>.json`) names that manifest.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipeline import layout
from pipeline.artifacts import read_manifest, sha256_file

RUNS = Path(layout.RUNS).name

BUILD_STAGES = ("export", "calibrate", "quantize", "lower")


def _unknown(reason: str) -> dict[str, Any]:
    return {"wall_time_s": None, "peak_rss_mb": None, "note": reason}


def build_record(pte: Path, data_dir: Path) -> dict[str, Any]:
    """Summed wall time and largest peak RSS of the stages from the model folder to `pte`."""
    lowered = data_dir / Path(layout.LOWERED).name
    if not (lowered / layout.MANIFEST).is_file():
        return _unknown(f"{lowered / layout.MANIFEST} does not exist")
    manifest = read_manifest(lowered)
    if manifest.get("files", {}).get(layout.LLM_PTE, {}).get("sha256") != sha256_file(pte):
        return _unknown(
            f"{pte} is not the {layout.LLM_PTE} that {lowered / layout.MANIFEST} describes")
    stages: dict[str, dict[str, float]] = {}
    pending = [(manifest, sha256_file(lowered / layout.MANIFEST))]
    while pending:
        current, digest = pending.pop()
        if current["stage"] in BUILD_STAGES:
            record = data_dir / RUNS / f"{current['stage']}.json"
            facts = json.loads(record.read_text()) if record.is_file() else {}
            if facts.get("manifest_sha256") != digest:
                return _unknown(f"{record} does not describe the {current['stage']} artifact "
                                "on disk (restored from another build?)")
            stages[current["stage"]] = {"wall_time_s": facts["wall_time_s"],
                                        "peak_rss_mb": facts["peak_rss_mb"]}
        for name, digest in current.get("inputs", {}).items():
            folder = data_dir / Path(name).name
            manifest_file = folder / layout.MANIFEST
            if not manifest_file.is_file() or sha256_file(manifest_file) != digest:
                return _unknown(f"{manifest_file} is not the input {current['stage']} was "
                                "built from (rebuilt since?)")
            pending.append((read_manifest(folder), digest))
    return {
        "wall_time_s": round(sum(s["wall_time_s"] for s in stages.values()), 2),
        "peak_rss_mb": max(s["peak_rss_mb"] for s in stages.values()),
        "stages": stages,
        "source": f"{data_dir}/{RUNS}/*.json",
    }
