"""Shared fixtures: a tiny random Llama built once per session, and repo paths."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def pytest_collection_modifyitems(config, items):
    if os.environ.get("EDGERAG_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow: set EDGERAG_SLOW=1 to run the real default model")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_cfg():
    from pipeline import config

    return config.validate(config.compose(["experiment=tiny"]))


@pytest.fixture(scope="session")
def tiny_llm(tiny_cfg):
    """(hf_model, params, llm_config, meta_state_dict) for a seeded random tiny Llama."""
    from pipeline.llm import checkpoint, export

    hf = checkpoint.random_model(tiny_cfg.model.source, vocab_size=512, bos_id=1, eos_id=2)
    params = checkpoint.meta_params(hf.config)
    llm = export.llm_config(tiny_cfg.model.executorch)
    return hf, params, llm, checkpoint.hf_to_meta(hf.state_dict())


@pytest.fixture(scope="session")
def tiny_program(tiny_llm):
    """The tiny model exported as the export stage does (KV cache, custom SDPA, metadata)."""
    from pipeline.llm import export

    _, params, llm, weights = tiny_llm
    metadata = export.runner_metadata(params, llm, 1, [2])
    model = export.apply(export.build_eager(params, llm, weights), export.runner_transforms(llm))
    return export.export_program(model, llm, metadata, "tiny"), metadata
