"""edgerag's build cost, read from the manifests its stages wrote while building the `.pte`.

The chain is followed from `lowered/manifest.json` through each manifest's `inputs` hashes, so a
figure is only reported when every manifest on the way still describes the files on disk.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.artifacts import MANIFEST, read_manifest, sha256_file

BUILD_STAGES = ("export", "calibrate", "quantize", "lower")


def _unknown(reason: str) -> dict[str, Any]:
    return {"wall_time_s": None, "peak_rss_mb": None, "note": reason}


def build_record(pte: Path, data_dir: Path) -> dict[str, Any]:
    """Summed wall time and largest peak RSS of the stages from the model folder to `pte`."""
    lowered = data_dir / "lowered"
    if not (lowered / MANIFEST).is_file():
        return _unknown(f"{lowered / MANIFEST} does not exist")
    manifest = read_manifest(lowered)
    if manifest.get("files", {}).get("llm.pte", {}).get("sha256") != sha256_file(pte):
        return _unknown(f"{pte} is not the llm.pte that {lowered / MANIFEST} describes")
    stages: dict[str, dict[str, float]] = {}
    pending = [manifest]
    while pending:
        current = pending.pop()
        if current["stage"] in BUILD_STAGES:
            stages[current["stage"]] = {"wall_time_s": current["wall_time_s"],
                                        "peak_rss_mb": current["peak_rss_mb"]}
        for name, digest in current.get("inputs", {}).items():
            folder = data_dir / Path(name).name
            if not (folder / MANIFEST).is_file() or sha256_file(folder / MANIFEST) != digest:
                return _unknown(f"{folder / MANIFEST} is not the input {current['stage']} was "
                                "built from (rebuilt since?)")
            pending.append(read_manifest(folder))
    return {
        "wall_time_s": round(sum(s["wall_time_s"] for s in stages.values()), 2),
        "peak_rss_mb": max(s["peak_rss_mb"] for s in stages.values()),
        "stages": stages,
        "source": f"{data_dir}/*/{MANIFEST}",
    }
