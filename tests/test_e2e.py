"""The real `dvc repro` on experiment=tiny, in a temporary copy of the repository."""

from __future__ import annotations

import json
import sys

import pytest

from tests.conftest import copy_repo, repro, sh

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return copy_repo(tmp_path_factory.mktemp("repo"), "experiment=tiny")


def test_repro_builds_a_pte_the_stock_runner_generates_from(repo):
    ran = repro(repo)
    assert ran == {"fetch_model", "split", "export", "calibrate", "quantize", "lower",
                   "make_tasks", "evaluate_llm", "evaluate_quantized", "fetch_embedder",
                   "compile_embedder", "prepare_corpus", "build_index", "evaluate"}
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


def test_metrics_follow_the_contract(repo):
    metrics = json.loads((repo / "data/eval/metrics.json").read_text())
    for key in ("ppl", "ppl_reference", "pte_bytes", "decode_tok_s", "prefill_tok_s",
                "peak_rss_mb"):
        assert metrics["llm"][key] > 0, key
    assert metrics["llm"]["ppl_delta_pct"] != 0  # 8da4w really quantized the .pte
    assert set(metrics["lm_eval"]) == {"edgerag_pydoc_cloze", "edgerag_stdlib_docstrings"}
    assert metrics["retrieval"]["recall_at_10"] >= 0.9
    assert metrics["retrieval"]["embed_cosine_min"] > 0.999
    shown = sh([sys.executable, "-m", "dvc", "metrics", "show", "--json"], repo).stdout
    assert "recall_at_10" in shown and "ppl_delta_pct" in shown


def test_group_size_change_reruns_only_quantize_lower_and_evaluation(repo):
    sh([sys.executable, "-m", "pipeline.cli", "configure", "experiment=tiny",
        "quant.group_size=64"], repo)
    assert repro(repo) == {"quantize", "lower", "evaluate_llm", "evaluate_quantized",
                           "evaluate"}


def test_corpus_change_reruns_only_the_index(repo):
    sh([sys.executable, "-m", "pipeline.cli", "configure", "experiment=tiny",
        "quant.group_size=64", "corpus.chunk_tokens=40"], repo)
    assert repro(repo) == {"prepare_corpus", "build_index", "evaluate"}
