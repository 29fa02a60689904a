"""The one way edgerag reaches a Dask scheduler: sweeps (`edgerag sweep --cluster`) and embedding
(`EDGERAG_EMBED_CLUSTER`) run on the same engine, installed by the same extra."""

from __future__ import annotations

from typing import Any

from pipeline.errors import BadInput

EXTRA = "cluster"


def connect(address: str, asked_by: str) -> Any:
    """A `distributed.Client` on `address`, or one sentence naming what asked for it and why not."""
    try:
        from distributed import Client
    except ModuleNotFoundError:
        raise BadInput(f"{asked_by} needs Dask: pip install -e '.[{EXTRA}]'.") from None
    try:  # waits `distributed.comm.timeouts.connect` (Dask's config: 30 s unless set)
        return Client(address)
    except OSError as error:
        raise BadInput(f"could not reach the Dask scheduler at {address} ({asked_by}): "
                       f"{error}") from None
