"""One thin script per dvc.yaml stage; what they all share is here."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pipeline import artifacts, config, declared, layout, params_file
from pipeline.errors import BadInput


@contextmanager
def output(stage: str, cfg: config.Config, **kwargs: Any) -> Iterator[Any]:
    """The stage's artifact writer, at its folder in `layout.OUTPUT`: the config slice it
    declares in dvc.yaml goes into the manifest, its wall time and memory into its run record
    (`data/runs/<stage>.json`).

    DVC records a stage's params as params.yaml holds them when the stage ends, so a stage
    whose declared params changed while it ran (an `edgerag configure` meanwhile) would lock
    values it never read: it fails instead, leaving no artifact, and the next `dvc repro`
    builds it with the new values."""
    read = declared.view(cfg, stage)
    with artifacts.writer(layout.OUTPUT[stage], stage=stage, config=read,
                          record=artifacts.run_record(stage), **kwargs) as out:
        yield out
        now = declared.view(params_file.load(), stage)
        changed = sorted(key for key in read if read[key] != now.get(key))
        if changed:
            raise BadInput(f"{config.PARAMS_FILE} changed while {stage} ran ({changed[0]}); "
                           "nothing was written: run `dvc repro` again.")
