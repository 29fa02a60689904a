"""What a sweep and a cluster both read from a DVC experiment job: where sweeps live, which
stages a job ran, why it failed, and which stages every job of a grid builds identically.

Its own home, below `sweep` and `cluster`, so that neither imports the other for these.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from pipeline import declared

SWEEPS = Path("sweeps")


def stages_run(dvc_stdout: str) -> list[str]:
    """The stages `dvc exp run` really ran (skipped and run-cache-restored ones say otherwise)."""
    return re.findall(r"Running stage '([^']+)'", dvc_stdout)


def failure_reason(dvc_stderr: str) -> str:
    """One line saying why a job failed: the stage's own `edgerag: …` sentence, else DVC's error."""
    lines = [line.strip() for line in dvc_stderr.splitlines() if line.strip()]
    ours = [line for line in lines if line.startswith("edgerag:")]
    dvc = [line.removeprefix("ERROR:").strip() for line in lines if line.startswith("ERROR:")]
    return (ours[-1:] or dvc[:1] or lines[-1:] or ["dvc exp run failed without a message."])[0]


def shared_stages(job_params: list[dict[str, Any]], dvc_file: Path = Path("dvc.yaml")
                  ) -> list[str]:
    """The stages every job builds identically: their declared params agree across all jobs and
    so do the stages they depend on. Built once before the jobs fan out, they are restored by
    every job instead of being built by several at once."""
    stages = OmegaConf.to_container(OmegaConf.load(dvc_file))["stages"]
    outs = {stage: [next(iter(o)) if isinstance(o, dict) else o for o in body.get("outs", [])]
            for stage, body in stages.items()}
    keys = declared.all_params(dvc_file)
    views = [OmegaConf.create(params) for params in job_params]
    shared: list[str] = []
    for stage, body in stages.items():  # dvc.yaml lists a stage after the stages it reads
        same = all(len({json.dumps(OmegaConf.to_container(v, resolve=True)
                                   if OmegaConf.is_config(v) else v, sort_keys=True)
                        for v in (OmegaConf.select(view, key) for view in views)}) == 1
                   for key in keys[stage])
        upstream = {other for dep in body.get("deps", []) for other, paths in outs.items()
                    if other != stage and any(dep == p or dep.startswith(f"{p}/") for p in paths)}
        if same and upstream <= set(shared):
            shared.append(stage)
    return shared if len(shared) < len(stages) else []
