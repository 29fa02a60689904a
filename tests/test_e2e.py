"""The README's first command on a fresh clone: `edgerag release` (what `make release` runs) on
experiment=tiny, built once per session; tests that change the build work on private copies.

pytest-xdist workers take these tests one by one in file order (tests/conftest.py): the ones
that rebuild stages (about a minute each) come first, longest first, and the quick checks of
the shared build last, to fill in behind them."""

from __future__ import annotations

import csv
import json
import shutil
import sys

import pytest

from tests.conftest import REPO, build_lock, copy_built, edgerag_script, repro, sh

pytestmark = pytest.mark.e2e

ALL_STAGES = {"fetch_model", "split", "export", "calibrate", "quantize", "lower", "make_tasks",
              "evaluate_llm", "evaluate_quantized", "fetch_embedder", "compile_embedder",
              "build_reranker",
              "prepare_corpus", "build_index", "evaluate_rag", "evaluate"}
RELEASE_FILES = {"llm.pte", "tokenizer.json", "embedder.pte", "embedder_tokenizer.json",
                 "index.usearch", "chunks.jsonl", "chunks.sqlite", "metrics.json",
                 "manifest.json"}


@pytest.fixture
def built(tiny_release_build):
    result = tiny_release_build.result
    assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return tiny_release_build


@pytest.fixture
def held(built):
    """The shared build held for this test alone, which runs DVC or edgerag in it (see
    `build_lock`); the other tests work on private copies."""
    with build_lock(built.repo):
        yield


def _edgerag(repo, *args, check=True):
    return sh([edgerag_script(), *args], repo, check=check)


def _committed_sweep_runs() -> list[str]:
    names = []
    for table in sorted(REPO.glob("sweeps/*/results.csv")):
        names += [row["experiment"] for row in csv.DictReader(table.open())
                  if row["status"] == "ok"]
    return names


def test_release_on_a_fresh_clone_skips_the_runs_it_lacks_and_verifies(built, held):
    out, err = built.result.stdout, built.result.stderr
    assert built.ran == ALL_STAGES
    for name in _committed_sweep_runs():  # experiments of the machine that ran the sweep
        assert f"skipping experiment {name} from sweeps/*/results.csv: no such experiment" in err
    assert "promoted workspace to releases/default/" in out and "tagged default@v0.0.1" in out
    assert "releases/default: " in out and "files match manifest.json" in out
    assert RELEASE_FILES <= {p.name for p in (built.repo / "releases/default").iterdir()}
    verified = _edgerag(built.repo, "verify", "releases/default").stdout
    assert "files match manifest.json (stage promote)" in verified


def test_changes_rerun_only_what_they_touch(built, tmp_path):
    repo = copy_built(built.repo, tmp_path / "repo")
    # Identical bytes keep their hash: re-exporting changes nothing downstream.
    out = sh([sys.executable, "-m", "dvc", "repro", "-f", "-s", "export"], repo).stdout
    assert "Running stage 'export'" in out
    assert repro(repo) == set()
    _edgerag(repo, "configure", "experiment=tiny", "quant.group_size=64")
    # calibrate re-runs (a scheme may read any quant.* key) and writes the same bytes.
    assert repro(repo) == {"calibrate", "quantize", "lower", "evaluate_llm",
                           "evaluate_quantized", "evaluate_rag", "evaluate"}
    _edgerag(repo, "configure", "experiment=tiny", "quant.group_size=64",
             "corpus.chunk_tokens=40")
    assert repro(repo) == {"prepare_corpus", "build_index", "evaluate_rag", "evaluate"}


def _folder_texts(repo) -> str:
    import sqlite3

    with sqlite3.connect(repo / "data/index/chunks.sqlite") as db:
        return "\n".join(text for (text,) in db.execute("SELECT text FROM chunks"))


def test_a_folder_with_no_question_set_releases_on_probes_and_its_edits_rebuild(built, tmp_path):
    """`edgerag release corpus=dir corpus.path=…` (what `make release CORPUS=…` runs) on a
    folder nobody wrote questions for; then an edited, an added and a removed file are each
    noticed by `dvc repro` and reach the index."""
    repo = copy_built(built.repo, tmp_path / "repo")
    folder = tmp_path / "notes"
    folder.mkdir()
    for name, text in (("logs.md", "# Logs\n\nRotate the service logs weekly with logrotate "
                        "so that they never fill the disk of the machine.\n"),
                       ("memory.md", "# Memory\n\nThe decoder needs four megabytes of working "
                        "memory for each block it reads from the archive.\n"),
                       ("fonts.md", "# Fonts\n\nFontconfig matches the requested pattern "
                        "against every installed face and keeps the best match.\n")):
        (folder / name).write_text(text)
    done = _edgerag(repo, "release", "--no-tag", "experiment=tiny", "corpus=dir",
                    f"corpus.path={folder}", "corpus.chunk_tokens=48", "corpus.overlap_tokens=8")
    assert "no question set for this corpus: the rule gated retrieval on rag_auto.*" in done.stdout
    metrics = json.loads((repo / "releases/default/metrics.json").read_text())
    assert "rag" not in metrics and metrics["rag_auto"]["probes"] >= 3
    assert 0.0 <= metrics["rag_auto"]["hit_at_k"] <= 1.0
    assert "logrotate" in _folder_texts(repo)

    (folder / "logs.md").write_text("# Logs\n\nShip the service logs to journald instead.\n")
    assert {"prepare_corpus", "build_index", "evaluate_rag"} <= repro(repo)
    assert "journald" in _folder_texts(repo) and "logrotate" not in _folder_texts(repo)
    built_index = json.loads((repo / "data/runs/build_index.json").read_text())
    assert built_index["embedded"] == 1 and built_index["reused"] >= 2  # only the edited text
    (folder / "mime.md").write_text("# Mime\n\nGlob patterns map file names to media types.\n")
    (folder / "fonts.md").unlink()
    assert "prepare_corpus" in repro(repo)
    texts = _folder_texts(repo)
    assert "Glob patterns" in texts and "Fontconfig" not in texts
    assert repro(repo) == set()  # and an untouched folder re-runs nothing


def test_a_qwen3_from_the_hub_runs_through_every_stage(built, tiny_cfg, tmp_path, monkeypatch):
    """A non-Llama family from a pinned hub revision (a hub cache laid out here, offline): a tiny
    random instance of Qwen 3's config, with no BOS token as Qwen's tokenizers have none."""
    from pipeline.llm import checkpoint
    from tests import tiny_families

    commit = "0123456789abcdef0123456789abcdef01234567"
    cache = tmp_path / "hf" / "hub" / "models--edgerag--tiny-qwen3"
    tokenizer = checkpoint.load_tokenizer(tiny_cfg.model.tokenizer_source)
    tokenizer.bos_token = None
    tiny_families.write_folder("qwen3", cache / "snapshots" / commit, tokenizer, layers=1)
    (cache / "refs").mkdir()
    (cache / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    repo = copy_built(built.repo, tmp_path / "repo")
    _edgerag(repo, "configure", "experiment=tiny", "model=qwen3_0_6b",
             "model.source.repo_id=edgerag/tiny-qwen3", f"model.source.revision={commit}",
             "model.linear_widths=[64,128]", "model.executorch.export.max_seq_length=128",
             "model.executorch.export.max_context_length=128")
    ran = repro(repo)
    assert {"fetch_model", "export", "calibrate", "quantize", "lower", "evaluate_llm",
            "evaluate_rag", "evaluate"} <= ran
    assert not {"compile_embedder", "build_index"} & ran  # the retrieval side is unchanged
    notes = json.loads((repo / "data/model/manifest.json").read_text())["notes"]
    assert notes["architecture"] == "qwen3" and notes["bos_id"] is None
    metrics = json.loads((repo / "data/eval/metrics.json").read_text())
    assert metrics["llm"]["ppl"] > 0 and 0 < abs(metrics["llm"]["ppl_delta_pct"]) < 100
    assert _edgerag(repo, "promote").returncode == 0
    answer = json.loads(_edgerag(repo, "ask", "What does the with statement do?", "--k", "3",
                                 "--max-new-tokens", "8", "--json").stdout)
    assert answer["sources"] and answer["timings"]["generated_tokens"] >= 1
    assert answer["timings"]["prompt_tokens"] == answer["timings"]["runner_prompt_tokens"]


def test_a_grid_recipe_compiles_a_llama_cpp_file_through_the_stages(built, tiny_cfg, tmp_path):
    """model=local on a GGUF of real Q4_1 blocks (tests/tiny_gguf.py), kept exactly. Q4_0 takes
    the same stages; its grid is checked where it differs, in tests/test_quant_recipes.py."""
    from executorch.extension.llm.runner import GenerationConfig

    from pipeline import sources
    from pipeline.runtime import text_runner
    from tests import tiny_gguf

    repo = copy_built(built.repo, tmp_path / "repo")
    (tmp_path / "model").mkdir()
    tiny_gguf.write(tmp_path / "model/tiny.gguf",
                    sources.materialize(tiny_cfg.model.tokenizer_source), linears="Q4_1",
                    layers=1)
    _edgerag(repo, "configure", "experiment=tiny", "model=local",
             f"model.source.path={tmp_path / 'model'}", "+model.source.file=tiny.gguf",
             "quant=q4_1_grid", "model.linear_widths=[64,128]",
             "model.executorch.export.max_seq_length=128",
             "model.executorch.export.max_context_length=128")
    assert {"fetch_model", "export", "calibrate", "quantize", "lower"} <= repro(repo, "lower")
    notes = json.loads((repo / "data/calibration/manifest.json").read_text())["notes"]
    assert notes["uses_calibration"] and notes["head_outliers"]  # the head's outlier channel
    lowered = repo / "data/lowered"
    pieces = []
    text_runner(lowered / "llm.pte", lowered / "tokenizer.json").generate(
        "The Python language reference says", GenerationConfig(
            max_new_tokens=4, temperature=0.0, echo=False), pieces.append, lambda _stats: None)
    assert len(pieces) == 4


def test_qnn_runs_through_the_stages_up_to_the_sdk(built, tmp_path):
    """backend=qnn on a fresh config: QNN-shaped export, QnnQuantizer calibration with a
    mixed-precision plan and SeqMSE, conversion, and the converted program's perplexity and
    estimated size on the CPU; lowering stops for the missing SDK."""
    repo = copy_built(built.repo, tmp_path / "repo")
    _edgerag(repo, "configure", "experiment=tiny", "backend=qnn", "quant=qnn_mixed_auto",
             "quant.pt2e.seq_mse_candidates=10", "quant.mixed.budget_mb=0.03")
    ran = repro(repo, "evaluate_quantized")
    assert {"export", "calibrate", "quantize", "evaluate_quantized"} <= ran
    assert "fetch_model" not in ran  # the model did not change
    plan = json.loads((repo / "data/calibration/plan.json").read_text())
    bits = [layer["bits"] for layer in plan["layers"].values()]
    # One layer's 7 linears: 21 kB at 4 bits, 39 kB at 8; a 30 kB budget keeps some of each.
    assert len(bits) == 7 and 4 in bits and 8 in bits
    assert len(plan["seq_mse"]) == 8  # and the head
    program = json.loads((repo / "data/eval_quantized/metrics.json").read_text())
    assert program["ppl"] > 0 and program["ppl_reference"] > 0 and program["tokens"] > 0
    from pipeline import layout
    from pipeline.llm import export, footprint

    fp32 = footprint.weight_bytes(export.load_program(repo / layout.EXPORT / layout.PROGRAM))
    # The tables dominate: the embedding at 16 bits, the head at 8, the rest far smaller.
    assert 0.3 < program["weight_bytes_estimate"] / fp32 < 0.45
    env_free = sh([sys.executable, "-m", "dvc", "repro", "lower"], repo, check=False)
    assert env_free.returncode != 0 and "QNN_SDK_ROOT" in env_free.stderr + env_free.stdout


def test_mixed_auto_measures_a_plan_and_a_group_size_change_remeasures_it(built, tmp_path):
    repo = copy_built(built.repo, tmp_path / "repo")
    _edgerag(repo, "configure", "experiment=tiny", "quant=mixed_auto", "quant.mixed.budget_mb=10")
    assert {"calibrate", "quantize", "lower"} <= repro(repo, "lower")
    plan = json.loads((repo / "data/calibration/plan.json").read_text())
    assert plan["layers"] and (repo / "data/lowered/llm.pte").is_file()
    _edgerag(repo, "configure", "experiment=tiny", "quant=mixed_auto", "quant.mixed.budget_mb=10",
             "quant.group_size=64")
    assert repro(repo, "calibrate") == {"calibrate"}  # the plan was measured at group size 32


def _stage_inputs() -> dict[str, list[str]]:
    import yaml

    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    return {name: [d for d in stage.get("deps", []) if d.startswith("data/")]
            for name, stage in stages.items()}


def test_every_stage_refuses_a_tampered_input(built, tmp_path):
    repo = copy_built(built.repo, tmp_path / "repo")
    checked = 0
    for name, inputs in sorted(_stage_inputs().items()):
        holding = [f for f in inputs if f.startswith("data/") and (repo / f).is_dir()
                   and json.loads((repo / f / "manifest.json").read_text())["files"]]
        for folder in holding[-1:]:  # one input per stage: its last in dvc.yaml with files
            manifest = json.loads((repo / folder / "manifest.json").read_text())
            smallest = min(manifest["files"], key=lambda rel: manifest["files"][rel]["bytes"])
            target = repo / folder / smallest
            kept = target.read_bytes()
            target.write_bytes(kept + b"tampered")
            try:
                done = sh([sys.executable, "-m", f"stages.{name}"], repo, check=False)
            finally:
                target.write_bytes(kept)
            assert done.returncode == 2, (name, folder, done.stderr[-1500:])
            assert done.stderr.strip().splitlines()[-1] == (
                f"edgerag: {folder}/{smallest} does not match its sha256 in "
                f"{folder}/manifest.json."), (name, folder)
            checked += 1
    assert checked == sum(1 for inputs in _stage_inputs().values()
                          if any(i != "data/runs/build_index.json" for i in inputs))


def _rule_row(experiment: str, metrics: dict, pte_bytes: float) -> str:
    return (f"{experiment},ok,x,{pte_bytes},{metrics['llm']['ppl_delta_pct']},"
            f"{metrics['retrieval']['recall_at_10']},{metrics['rag']['hit_at_k']},"
            f"{metrics['rag']['grounded']},{metrics['retrieval']['embed_cosine_min']}\n")


def test_promote_picks_present_runs_and_refuses_rows_that_lie(built, tmp_path):
    repo = copy_built(built.repo, tmp_path / "repo")
    metrics = json.loads((repo / "data/eval/metrics.json").read_text())
    pte_bytes = metrics["llm"]["pte_bytes"]
    sh([sys.executable, "-m", "dvc", "exp", "save", "-n", "e2e-exp"], repo)
    shutil.rmtree(repo / "data/eval")  # the sweep's rows are then the only candidates
    header = ("experiment,status,overrides,llm.pte_bytes,llm.ppl_delta_pct,"
              "retrieval.recall_at_10,rag.hit_at_k,rag.grounded,retrieval.embed_cosine_min\n")
    sweep = repo / "sweeps/e2e/results.csv"
    sweep.parent.mkdir(parents=True)
    # The rule's favourite (1 byte) exists only on another machine: skipped, in one line.
    sweep.write_text(header + _rule_row("elsewhere-0", metrics, 1)
                     + _rule_row("e2e-exp", metrics, pte_bytes) + "broken,failed,x,,,,,,\n")
    done = _edgerag(repo, "promote", "--name", "from-sweep", "--no-tag")
    assert "skipping experiment elsewhere-0" in done.stderr and "promoted e2e-exp" in done.stdout
    shipped = json.loads((repo / "releases/from-sweep/manifest.json").read_text())
    lowered = json.loads((repo / "data/lowered/manifest.json").read_text())
    assert shipped["notes"]["run"] == "e2e-exp"
    assert shipped["files"]["llm.pte"] == lowered["files"]["llm.pte"]

    sweep.write_text(header + _rule_row("e2e-exp", metrics, 1))  # smaller than it measured
    refused = _edgerag(repo, "promote", "--name", "lie", "--no-tag", check=False)
    assert refused.returncode == 2 and "llm.pte_bytes=1" in refused.stderr
    assert "disagrees" in refused.stderr and not (repo / "releases/lie").exists()

    missing = _edgerag(repo, "promote", "--run", "nowhere", "--no-tag", check=False)
    assert missing.returncode == 2 and missing.stderr.strip().splitlines() == [
        f"edgerag: --run nowhere is not an experiment or git revision of {repo}; "
        "list them with `dvc exp show`."]


def test_a_build_missing_the_rule_is_not_promoted(built, tmp_path):
    repo = copy_built(built.repo, tmp_path / "repo")
    _edgerag(repo, "configure", "experiment=tiny", "release.max_ppl_delta_pct=-1000",
             "release.name=strict")
    result = _edgerag(repo, "promote", "--no-tag", check=False)
    sentences = [line for line in result.stderr.splitlines() if line.startswith("edgerag:")]
    assert result.returncode == 2 and len(sentences) == 1  # beside one line per skipped run
    assert "release.max_ppl_delta_pct=-1000" in sentences[0]
    assert not (repo / "releases/strict").exists()


def test_ask_shows_the_answer_and_sources_not_the_runners_log(built, held):
    question = ["ask", "What does the assert statement do?", "--k", "3", "--max-new-tokens", "8"]
    done = _edgerag(built.repo, *question)
    assert "\n\nSources:\n[1] pydoc:" in done.stdout
    assert ".cpp:" not in done.stderr and ".cpp:" not in done.stdout
    # --verbose lets stderr through while the programs load (a quiet run sends it to /dev/null).
    verbose = sh([sys.executable, "-X", "importtime", edgerag_script(), *question, "--verbose"],
                 built.repo)
    assert ".cpp:" in verbose.stderr  # ExecuTorch's own lines, on request
    # A question runs programs, never ExecuTorch's compiler (2.5 s before the first token).
    imported = {line.split("|")[-1].strip() for line in verbose.stderr.splitlines()
                if line.startswith("import time:")}
    assert {"torch", "executorch.extension.pybindings._C"} <= imported
    assert not {"executorch.exir", "torch._inductor"} & imported
    answer = json.loads(_edgerag(built.repo, *question, "--json").stdout)
    chunks = [json.loads(line) for line in (built.repo / "releases/default/chunks.jsonl").open()]
    assert isinstance(answer["answer"], str) and 1 <= len(answer["sources"]) <= 3
    for source in answer["sources"]:
        assert any(c["source"] == source["source"] and c["start"] == source["start"]
                   for c in chunks)
    timings = answer["timings"]
    assert timings["prompt_tokens"] == timings["runner_prompt_tokens"]
    assert timings["prompt_tokens"] + 8 <= 128 and timings["generated_tokens"] >= 1


@pytest.mark.parametrize("name", ["index.usearch", "chunks.sqlite"])
def test_ask_and_verify_refuse_a_tampered_release(built, tmp_path, name):
    repo = copy_built(built.repo, tmp_path / "repo")
    with open(repo / "releases/default" / name, "r+b") as handle:
        handle.seek(64)
        byte = handle.read(1)
        handle.seek(64)
        handle.write(bytes([byte[0] ^ 0xFF]))
    sentence = (f"edgerag: releases/default/{name} does not match its sha256 in "
                "releases/default/manifest.json.")
    for command in (["ask", "What does assert do?"], ["verify", "releases/default"]):
        refused = _edgerag(repo, *command, check=False)
        assert refused.returncode == 2 and refused.stdout == "", command
        assert refused.stderr.strip() == sentence, command


def test_the_pte_runs_in_the_stock_runner_and_nothing_reruns(built, held):
    from executorch.extension.llm.runner import GenerationConfig

    from pipeline.runtime import text_runner

    lowered = built.repo / "data/lowered"
    assert (lowered / "llm.ptd").is_file()  # weights beside the program; the runner takes both
    runner = text_runner(lowered / "llm.pte", lowered / "tokenizer.json")
    pieces, stats = [], []
    runner.generate("The Python language reference says", GenerationConfig(
        max_new_tokens=8, temperature=0.0, echo=False), pieces.append, stats.append)
    # The runner counts the tokens decoded after the first, which prefill yields.
    assert stats[0].num_generated_tokens + 1 == len(pieces) == 8
    assert repro(built.repo) == set()


def test_metrics_follow_the_contract(built, held):
    metrics = json.loads((built.repo / "data/eval/metrics.json").read_text())
    for key in ("ppl", "ppl_reference", "pte_bytes", "decode_tok_s", "prefill_tok_s",
                "peak_rss_mb", "long_prompt_decode_tok_s", "long_prompt_ttft_ms"):
        assert metrics["llm"][key] > 0, key
    assert metrics["llm"]["long_prompt_tokens"] == 64  # experiment=tiny's held-out prompt, exactly
    rag = metrics["rag"]  # the context a prompt needs, beside the context the .pte has
    assert rag["context_tokens"] == 128 and rag["context_need_tokens"] > 0
    assert 0 < abs(metrics["llm"]["ppl_delta_pct"]) < 100  # really quantized, and not broken
    assert "quantized_program" not in metrics  # XNNPACK: the .pte itself is the judge
    assert set(metrics["lm_eval"]) == {"edgerag_pydoc_cloze", "edgerag_stdlib_docstrings"}
    assert metrics["retrieval"]["recall_at_10"] >= 0.9
    assert metrics["retrieval"]["embed_cosine_min"] > 0.999
    shown = sh([sys.executable, "-m", "dvc", "metrics", "show", "--json"], built.repo).stdout
    assert "recall_at_10" in shown and "ppl_delta_pct" in shown
    record = json.loads((built.repo / "data/runs/lower.json").read_text())
    assert record["wall_time_s"] > 0 and record["peak_rss_mb"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("family", ["llama3_2", "qwen2_5", "qwen3_5", "phi4_mini", "lfm2"])
def test_each_family_from_a_local_folder_runs_every_stage(built, tiny_cfg, tmp_path, family):
    """model=local on a tiny random instance of the family's real config, under the tiny
    config's 8da4w recipe (Qwen 3, from the hub, runs in every suite above)."""
    from pipeline.llm import checkpoint
    from tests import tiny_families

    tokenizer = checkpoint.load_tokenizer(tiny_cfg.model.tokenizer_source)
    tiny_families.write_folder(family, tmp_path / "model", tokenizer,
                               layers=tiny_families.DEPTH.get(family, 1))
    repo = copy_built(built.repo, tmp_path / "repo")
    _edgerag(repo, "configure", "experiment=tiny", "model=local",
             f"model.source.path={tmp_path / 'model'}", "model.linear_widths=[64,128]",
             "model.executorch.export.max_seq_length=128",
             "model.executorch.export.max_context_length=128")
    assert {"fetch_model", "export", "quantize", "lower", "evaluate_llm", "evaluate_rag",
            "evaluate"} <= repro(repo)
    notes = json.loads((repo / "data/model/manifest.json").read_text())["notes"]
    assert notes["architecture"] == tiny_families.config(family, 512).model_type
    llm = json.loads((repo / "data/eval_llm/metrics.json").read_text())["llm"]
    assert llm["ppl"] > 0 and 0 < abs(llm["ppl_delta_pct"]) < 100 and llm["decode_tok_s"] > 0
