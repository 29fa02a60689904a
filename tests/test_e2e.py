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

    from executorch.extension.llm.runner import GenerationConfig

    from pipeline.runtime import text_runner

    # The default lowering keeps weights in llm.ptd beside llm.pte; the runner takes both.
    assert (repo / "data/lowered/llm.ptd").is_file()
    runner = text_runner(repo / "data/lowered/llm.pte", repo / "data/lowered/tokenizer.json")
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


def _edgerag(repo, *args, check=True):
    return sh([sys.executable, "-m", "pipeline.cli", *args], repo, check=check)


def _sha256(path):
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


RELEASE_FILES = {"llm.pte", "tokenizer.json", "embedder.pte", "embedder_tokenizer.json",
                 "index.usearch", "chunks.jsonl", "metrics.json", "manifest.json"}


def test_promote_ships_a_tagged_release_dvc_can_fetch(repo, tmp_path):
    for args in (["config", "user.name", "edgerag e2e"], ["config", "user.email", "e2e@x.invalid"],
                 ["add", "-A"], ["commit", "-qm", "the tiny build"]):
        sh(["git", *args], repo)
    out = _edgerag(repo, "promote").stdout
    assert "promoted workspace to releases/default/" in out and "tagged default@v0.0.1" in out
    release = repo / "releases/default"
    assert RELEASE_FILES <= {p.name for p in release.iterdir()}
    assert sh(["git", "cat-file", "-t", "default@v0.0.1"], repo).stdout.strip() == "tag"
    sh([sys.executable, "-m", "dvc", "artifacts", "get", ".", "default", "--rev", "v0.0.1",
        "-o", str(tmp_path / "fetched")], repo)
    assert _sha256(tmp_path / "fetched/llm.pte") == _sha256(release / "llm.pte")

    sh([sys.executable, "-m", "dvc", "exp", "save", "-n", "e2e-exp"], repo)
    _edgerag(repo, "promote", "--run", "e2e-exp", "--name", "from-exp", "--no-tag")
    sweep = repo / "sweeps/e2e/results.csv"  # a sweep whose one finished job is the smallest
    sweep.parent.mkdir(parents=True)
    sweep.write_text("experiment,status,overrides,llm.pte_bytes,llm.ppl_delta_pct,"
                     "retrieval.recall_at_10\ne2e-exp,ok,quant.group_size=64,1,0.0,1.0\n"
                     "e2e-broken,failed,quant=nope,,,\n")
    _edgerag(repo, "promote", "--name", "from-sweep", "--no-tag")
    for name in ("from-exp", "from-sweep"):
        manifest = json.loads((repo / "releases" / name / "manifest.json").read_text())
        assert manifest["notes"]["run"] == "e2e-exp"
        assert manifest["files"]["llm.pte"]["sha256"] == _sha256(release / "llm.pte")


def test_a_build_missing_the_rule_is_not_promoted(repo):
    _edgerag(repo, "configure", "experiment=tiny", "quant.group_size=64", "corpus.chunk_tokens=40",
             "release.max_ppl_delta_pct=-1000", "release.name=strict")
    result = _edgerag(repo, "promote", "--no-tag", check=False)
    _edgerag(repo, "configure", "experiment=tiny", "quant.group_size=64", "corpus.chunk_tokens=40")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "release.max_ppl_delta_pct=-1000" in result.stderr
    assert not (repo / "releases/strict").exists()


def test_ask_answers_with_sources_and_refuses_a_tampered_release(repo):
    question = ["ask", "What does the assert statement do?", "--k", "3", "--max-new-tokens", "8"]
    out = _edgerag(repo, *question).stdout
    assert "\n\nSources:\n[1] pydoc:" in out
    answer = json.loads(_edgerag(repo, *question, "--json").stdout)
    chunks = [json.loads(line) for line in (repo / "releases/default/chunks.jsonl").open()]
    assert isinstance(answer["answer"], str) and 1 <= len(answer["sources"]) <= 3
    for source in answer["sources"]:
        assert any(c["source"] == source["source"] and c["start"] == source["start"]
                   for c in chunks)
    timings = answer["timings"]
    assert timings["prompt_tokens"] == timings["runner_prompt_tokens"]
    assert timings["prompt_tokens"] + 8 <= 128 and timings["generated_tokens"] >= 1

    with open(repo / "releases/default/index.usearch", "r+b") as handle:
        handle.seek(64)
        byte = handle.read(1)
        handle.seek(64)
        handle.write(bytes([byte[0] ^ 0xFF]))
    refused = _edgerag(repo, *question, check=False)
    assert refused.returncode == 2 and refused.stdout == ""
    assert refused.stderr.strip() == ("edgerag: releases/default/index.usearch does not match "
                                      "its sha256 in releases/default/manifest.json.")
