"""The real `dvc repro` on experiment=tiny, in a temporary copy of the repository."""

from __future__ import annotations

import sys

import pytest

from tests.conftest import copy_repo, repro, sh

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return copy_repo(tmp_path_factory.mktemp("repo"), "experiment=tiny")


def test_repro_builds_a_pte_the_stock_runner_generates_from(repo):
    ran = repro(repo)
    assert {"fetch_model", "split", "export", "calibrate", "quantize", "lower", "make_tasks",
            "evaluate"} <= ran
    sh([sys.executable, "-m", "pipeline.cli", "verify", "data/lowered"], repo)

    from pipeline.runtime import register_llm_kernels

    register_llm_kernels()
    from executorch.extension.llm.runner import GenerationConfig, TextLLMRunner

    runner = TextLLMRunner(str(repo / "data/lowered/llm.pte"),
                           str(repo / "data/lowered/tokenizer.json"))
    pieces, stats = [], []
    runner.generate("The Python language reference says", GenerationConfig(
        max_new_tokens=8, temperature=0.0), pieces.append, stats.append)
    assert stats and stats[0].num_generated_tokens >= 1
    assert "".join(pieces)


def test_second_repro_runs_nothing(repo):
    assert repro(repo) == set()


def test_group_size_change_reruns_only_quantize_lower_and_evaluate(repo):
    sh([sys.executable, "-m", "pipeline.cli", "configure", "experiment=tiny",
        "quant.group_size=64"], repo)
    assert repro(repo) == {"quantize", "lower", "evaluate"}
