"""A stage given bad input exits 2 with one sentence and leaves nothing in data/."""

from __future__ import annotations

import sys

import pytest

from tests.conftest import copy_repo, sh


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return copy_repo(tmp_path_factory.mktemp("bad"), "experiment=tiny")


def _stage(repo, name, *overrides):
    sh([sys.executable, "-m", "pipeline.cli", "configure", "experiment=tiny", *overrides], repo)
    return sh([sys.executable, "-m", f"stages.{name}"], repo, check=False)


def _one_sentence(result):
    lines = [line for line in result.stderr.splitlines() if line.startswith("edgerag:")]
    assert len(lines) == 1, result.stderr[-2000:]
    return lines[0]


def test_missing_input_artifact_names_the_stage_to_run(repo):
    result = _stage(repo, "export")
    assert result.returncode == 2
    assert "data/model does not exist; run the stage that builds it" in _one_sentence(result)
    assert not (repo / "data" / "export").exists()


def test_bad_params_file_exits_2(repo):
    (repo / "params.yaml").write_text("quant: {method: torchao, name: x, bits: 3}\n")
    result = sh([sys.executable, "-m", "stages.split"], repo, check=False)
    assert result.returncode == 2
    assert _one_sentence(result).startswith("edgerag: model.name must be set")
