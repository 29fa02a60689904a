"""One thin script per dvc.yaml stage; what they all share is here."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pipeline import artifacts, config, declared, layout


@contextmanager
def output(stage: str, cfg: config.Config, **kwargs: Any) -> Iterator[Any]:
    """The stage's artifact writer, at its folder in `layout.OUTPUT`: the config slice it
    declares in dvc.yaml goes into the manifest, its wall time and memory into its run record
    (`data/runs/<stage>.json`)."""
    with artifacts.writer(layout.OUTPUT[stage], stage=stage, config=declared.view(cfg, stage),
                          record=artifacts.run_record(stage), **kwargs) as out:
        yield out
