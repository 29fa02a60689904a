"""The build in data/ as the benches read it: the documents its index holds, and its assistant."""

from __future__ import annotations

from pathlib import Path

from pipeline import bundle, layout
from pipeline.config import RetrievalConfig
from pipeline.device.ask import Assistant
from pipeline.retrieval.corpus import read_chunks


def documents() -> set[str]:
    """The source names of the build's chunks (what a question set may expect)."""
    return {c.source for c in read_chunks(Path(layout.INDEX) / layout.CHUNKS)}


def assistant(retrieval: RetrievalConfig) -> Assistant:
    """`ask`'s own loop over the build's artifacts, retrieving as `retrieval` says."""
    return Assistant(bundle.run_sources(Path(".")), retrieval)
