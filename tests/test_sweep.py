"""`edgerag sweep`: the results table, the Pareto front, Optuna's objectives, and one real sweep."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import sys
from pathlib import Path

import psutil
import pytest
from omegaconf import OmegaConf

from pipeline import conf, config, params_file
from pipeline.artifacts import sha256_file
from pipeline.experiments import jobs, pareto, results, sweep
from tests.conftest import copy_built, edgerag_script, sh

DVC_OUT = """\
'data/model.dvc' didn't change, skipping
Stage 'export' didn't change, skipping
Running stage 'quantize':
> python -m stages.quantize
Stage 'calibrate' is cached - skipping run, checking out outputs
Running stage 'lower':
> python -m stages.lower
"""


def test_flatten_names_nested_metrics_with_dots():
    metrics = {"llm": {"ppl": 9.5, "pte_bytes": 123},
               "lm_eval": {"cloze": {"acc": 0.5}}, "windows": [1, 2]}
    assert results.flatten(metrics) == {"llm.ppl": 9.5, "llm.pte_bytes": 123,
                                      "lm_eval.cloze.acc": 0.5, "windows": "[1, 2]"}


def test_results_csv_has_one_row_per_job_and_blank_metrics_for_failures():
    rows = [{"job": 0, "experiment": "s-0", "status": "ok", "overrides": "quant=a",
             "llm.ppl_delta_pct": 1.5, "retrieval.recall_at_10": 1.0, "llm_pte_sha256": "ab"},
            {"job": 1, "experiment": "", "status": "failed", "reason": "edgerag: no.",
             "overrides": "quant=b"}]
    text = results.results_csv(rows)
    header = text.splitlines()[0].split(",")
    assert header[:5] == ["job", "experiment", "status", "reason", "overrides"]
    assert header[-2:] == ["llm_pte_sha256", "index_sha256"]
    assert header.index("llm.ppl_delta_pct") < header.index("retrieval.recall_at_10")
    parsed = list(csv.DictReader(io.StringIO(text)))
    assert parsed[0]["llm.ppl_delta_pct"] == "1.5" and parsed[0]["llm_pte_sha256"] == "ab"
    assert parsed[1]["llm.ppl_delta_pct"] == "" and parsed[1]["reason"] == "edgerag: no."


def test_front_keeps_only_undominated_points():
    points = [(1.0, 5.0), (2.0, 3.0), (3.0, 4.0), (4.0, 1.0), (2.0, 3.0), (5.0, 1.0)]
    assert pareto.front(points) == [True, True, False, True, True, False]


def test_points_convert_size_to_mb_and_skip_failed_jobs():
    rows = [{"job": 0, "status": "ok", "quant": "a", "llm.pte_bytes": 2_000_000,
             "llm.ppl_delta_pct": 4.0, "llm.decode_tok_s": 50.0},
            {"job": 1, "status": "ok", "quant": "b", "llm.pte_bytes": 3_000_000,
             "llm.ppl_delta_pct": 1.0, "llm.decode_tok_s": ""},
            {"job": 2, "status": "ok", "quant": "c", "llm.pte_bytes": 3_500_000,
             "llm.ppl_delta_pct": 2.0},
            {"job": 3, "status": "failed", "quant": "d"}]
    data = pareto.points(rows)
    assert [(d["job"], d["pte_mb"], d["pareto"]) for d in data] == [
        (0, 2.0, True), (1, 3.0, True), (2, 3.5, False)]
    assert data[0]["decode_tok_s"] == 50.0 and data[1]["decode_tok_s"] is None


def test_write_saves_the_plot_data_and_a_png(tmp_path):
    rows = [{"job": 0, "status": "ok", "quant": "a", "experiment": "s-0",
             "llm.pte_bytes": 1_500_000, "llm.ppl_delta_pct": 3.0, "llm.decode_tok_s": 40.0},
            {"job": 1, "status": "ok", "quant": "b", "experiment": "s-1",
             "llm.pte_bytes": 1_000_000, "llm.ppl_delta_pct": 5.0, "llm.decode_tok_s": 60.0}]
    pareto.write(rows, tmp_path)
    saved = json.loads((tmp_path / pareto.DATA).read_text())
    assert [(d["experiment"], d["pte_mb"], d["pareto"]) for d in saved] == [
        ("s-0", 1.5, True), ("s-1", 1.0, True)]
    assert (tmp_path / pareto.PLOT).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob(".*"))  # no temporary file left behind


def test_failure_reason_is_the_stages_sentence_else_dvcs_error():
    stage_failed = ("[   0.1s] lowering\nedgerag: QNN_SDK_ROOT is not set: install the SDK.\n"
                    "ERROR: failed to reproduce 'lower': failed to run: python -m stages.lower, "
                    "exited with 2\n")
    assert jobs.failure_reason(stage_failed) == (
        "edgerag: QNN_SDK_ROOT is not set: install the SDK.")
    dvc_only = "ERROR: Experiment conflicts with existing experiment 's-0'.\n\n\tdvc exp run -f\n"
    assert jobs.failure_reason(dvc_only) == "Experiment conflicts with existing experiment 's-0'."
    assert jobs.failure_reason("") == "dvc exp run failed without a message."


def test_stages_run_ignores_skipped_and_cached_stages():
    assert jobs.stages_run(DVC_OUT) == ["quantize", "lower"]


def test_objectives_match_the_optuna_sweepers_directions():
    sweeper = OmegaConf.load(conf.CONF_DIR / "hydra/sweeper/optuna_pareto.yaml")
    assert list(sweeper.direction) == ["minimize"] * len(results.OBJECTIVES)
    row = {"status": "ok", "llm.ppl_delta_pct": 2.5, "llm.pte_bytes": 1234}
    assert results.objectives(row) == (2.5, 1234.0)
    assert results.objectives({"status": "failed", "reason": "x"}) is None


def test_a_job_with_an_invalid_combination_fails_before_dvc(tmp_path):
    composed = conf.compose(["experiment=tiny", "quant=qnn_16a4w"])
    row = sweep.plan_job(composed, ["quant=qnn_16a4w"], tmp_path)
    assert row["status"] == "failed" and row["experiment"] == ""
    assert row["reason"] == "quant=qnn_16a4w quantizes for QNN; it needs backend=qnn."
    assert not (tmp_path / config.PARAMS_FILE).exists()  # nothing for the queue to run


def _params(*overrides):
    typed = params_file.validate(conf.compose(["experiment=tiny", *overrides]))
    return OmegaConf.to_container(OmegaConf.create(conf.params_text(typed, list(overrides))))


def test_the_stages_every_job_builds_alike_are_built_once_before_the_fan_out():
    llm_only = jobs.shared_stages([_params("quant=8da4w_g32"), _params("quant=8da4w_g64")])
    assert {"fetch_model", "export", "compile_embedder", "build_index"} <= set(llm_only)
    assert not {"quantize", "lower", "evaluate_llm", "evaluate"} & set(llm_only)
    rag_only = jobs.shared_stages([_params("corpus.chunking=tokens"),
                                    _params("corpus.chunking=sections")])
    assert {"export", "quantize", "lower", "evaluate_llm"} <= set(rag_only)
    assert not {"prepare_corpus", "build_index", "evaluate_rag"} & set(rag_only)
    assert jobs.shared_stages([_params(), _params()]) == []  # identical jobs: nothing to seed


@pytest.mark.parametrize("flag, value", [("--jobs", "0"), ("--jobs", "-2"), ("--threads", "0")])
def test_jobs_and_threads_below_one_fail_in_one_sentence(tmp_path, flag, value):
    done = sh([sys.executable, "-m", "pipeline.cli", "sweep", "-m", "quant=8da4w_g32",
               flag, value, "--name", "n"], tmp_path, check=False)
    assert done.returncode == 2
    [line] = done.stderr.strip().splitlines()
    assert line.startswith(f"edgerag: {flag} {value} must be 1 or more")
    assert not (tmp_path / "sweeps").exists()


@pytest.mark.skipif(sweep._has_optuna(), reason="the sweep-optuna extra is installed")
def test_optuna_without_the_extra_names_it(tmp_path):
    done = sh([sys.executable, "-m", "pipeline.cli", "sweep", "hydra/sweeper=optuna_pareto",
               "-m", "quant=8da4w_g32,8da4w_g64"], tmp_path, check=False)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "edgerag: the Optuna sweeper is not installed: pip install -e '.[sweep-optuna]'."]


@pytest.fixture(scope="module")
def swept(tiny_release_build, tmp_path_factory):
    """A real sweep on experiment=tiny, two jobs at once: two schemes, and a QNN scheme that
    cannot run here, in a copy of the session's tiny build (its DVC cache and run cache serve what
    the sweep does not change)."""
    assert tiny_release_build.result.returncode == 0, tiny_release_build.result.stderr[-2000:]
    repo = copy_built(tiny_release_build.repo, tmp_path_factory.mktemp("sweep") / "repo")
    sh(["git", "add", "-A"], repo)
    sh(["git", "commit", "-qm", "baseline", "--allow-empty"], repo)
    params = (repo / "params.yaml").read_text()
    # As in a fresh clone: the lock pins run records (data/runs/) another machine's build wrote,
    # which this cache never held; the jobs must still restore what this cache has.
    lock = repo / "dvc.lock"
    foreign = re.sub(r"(path: data/runs/\w+\.json\n\s+hash: md5\n\s+md5: )\w+",
                     lambda m: m.group(1) + "deadbeef" * 4, lock.read_text())
    assert foreign.count("deadbeef" * 4) >= 10
    lock.write_text(foreign)
    sh([sys.executable, "-m", "pipeline.cli", "sweep", "-m", "experiment=tiny",
        "quant=8da4w_g32,qnn_16a4w,8da4w_g64", "--name", "t", "--jobs", "2"], repo)
    assert lock.read_text() == foreign  # the queue never touches the workspace's lock
    sh(["git", "checkout", "dvc.lock"], repo)
    rows = list(csv.DictReader((repo / "sweeps/t/results.csv").open()))
    return repo, params, {int(row["job"]): row for row in rows}


@pytest.mark.e2e
def test_sweep_records_every_job_and_a_failure_does_not_stop_it(swept):
    _, _, rows = swept
    assert {job: row["status"] for job, row in rows.items()} == {0: "ok", 1: "failed", 2: "ok"}
    assert rows[1]["reason"] == "quant=qnn_16a4w quantizes for QNN; it needs backend=qnn."
    assert [rows[0]["experiment"], rows[2]["experiment"]] == ["t-0", "t-2"]
    for job in (0, 2):
        assert float(rows[job]["llm.pte_bytes"]) > 0
        assert 0 < abs(float(rows[job]["llm.ppl_delta_pct"])) < 100  # quantized, not broken
        assert float(rows[job]["retrieval.recall_at_10"]) >= 0.9
    # Both jobs score the same fp32 reference on the same tasks: one figure, whatever the .pte.
    for key in ("lm_eval.edgerag_pydoc_cloze.acc_reference", "llm.ppl_reference"):
        assert rows[0][key] == rows[2][key], key


@pytest.mark.e2e
def test_unchanged_stages_are_not_rebuilt(swept):
    _, _, rows = swept
    runs = [stage for row in rows.values() for stage in row["stages_run"].split()]
    assert rows[0]["stages_run"] == ""  # the session's build is this job: restored, not rebuilt
    assert runs.count("export") == 0 and runs.count("fetch_model") == 0
    assert set(rows[2]["stages_run"].split()) == {"calibrate", "quantize", "lower",
                                                  "evaluate_llm", "evaluate_quantized",
                                                  "evaluate_rag", "evaluate"}


@pytest.mark.e2e
def test_rows_carry_the_artifact_hashes_and_dvc_lists_the_experiments(swept):
    repo, _, rows = swept
    # The queue never touches the workspace: it still holds the baseline, which job 0 restored.
    assert rows[0]["llm_pte_sha256"] == sha256_file(repo / "data/lowered/llm.pte")
    assert rows[0]["llm_pte_sha256"] != rows[2]["llm_pte_sha256"]  # group 32 vs 64
    assert rows[0]["index_sha256"] == rows[2]["index_sha256"] == sha256_file(
        repo / "data/index/index.usearch")
    shown = sh([sys.executable, "-m", "dvc", "exp", "show", "--json"], repo).stdout
    names = set(_values(json.loads(shown), "name"))
    assert {"t-0", "t-2"} <= names and "t-1" not in names


@pytest.mark.e2e
def test_pareto_plot_and_restored_params(swept):
    repo, params, rows = swept
    data = json.loads((repo / "sweeps/t/pareto.json").read_text())
    assert [d["experiment"] for d in data] == ["t-0", "t-2"]
    assert data[0]["pte_mb"] == round(float(rows[0]["llm.pte_bytes"]) / 1e6, 4)
    assert any(d["pareto"] for d in data)
    assert (repo / "sweeps/t/pareto.png").read_bytes()[:4] == b"\x89PNG"
    assert (repo / "params.yaml").read_text() == params


def _values(tree, key):
    """Every value of `key` anywhere in a JSON tree (dvc exp show's nesting varies by version)."""
    if isinstance(tree, dict):
        for name, value in tree.items():
            if name == key:
                yield value
            yield from _values(value, key)
    elif isinstance(tree, list):
        for item in tree:
            yield from _values(item, key)


@pytest.mark.e2e
def test_promote_ships_exactly_the_row_the_rule_selects(swept):
    """Among the sweep's rows (and the workspace, which holds job 0's build), the rule's
    pick is the smallest .pte within the bounds; a bound between the rows' deltas moves it."""
    repo, params, rows = swept
    ok = [rows[0], rows[2]]
    deltas = sorted(float(r["llm.ppl_delta_pct"]) for r in ok)
    try:
        for name, bound in (("loose", deltas[1] + 1), ("tight", sum(deltas) / 2)):
            sh([edgerag_script(), "configure", "experiment=tiny",
                f"release.max_ppl_delta_pct={bound}"], repo)
            sh([edgerag_script(), "promote", "--no-tag", "--name", name], repo)
            within = [r for r in ok if float(r["llm.ppl_delta_pct"]) <= bound]
            expected = min(within, key=lambda r: float(r["llm.pte_bytes"]))
            shipped = json.loads((repo / "releases" / name / "manifest.json").read_text())
            assert shipped["files"]["llm.pte"]["sha256"] == expected["llm_pte_sha256"], name
    finally:
        (repo / "params.yaml").write_text(params)


@pytest.mark.e2e
def test_a_retrieval_only_sweep_rebuilds_no_llm_stage(swept):
    """Chunking and retrieval settings reach the corpus, index and RAG stages only: the LLM's
    stages come from the baseline's lock, and the row still carries the answers' columns."""
    repo, params, _ = swept
    try:
        # quant=8da4w_g64: the LLM stages are served from the run cache t-2 filled.
        sh([sys.executable, "-m", "pipeline.cli", "sweep", "-m", "experiment=tiny",
            "quant=8da4w_g64", "corpus.chunking=tokens", "retrieval.mode=keyword,hybrid",
            "--name", "r"], repo)
    finally:
        (repo / "params.yaml").write_text(params)
    rows = list(csv.DictReader((repo / "sweeps/r/results.csv").open()))
    assert [row["status"] for row in rows] == ["ok", "ok"], [row["reason"] for row in rows]
    assert set(rows[0]["stages_run"].split()) == {"prepare_corpus", "build_index",
                                                  "evaluate_rag", "evaluate"}
    assert set(rows[1]["stages_run"].split()) == {"evaluate_rag", "evaluate"}
    assert all(row["rag.hit_at_k"] != "" and row["rag.grounded"] != "" for row in rows)
    assert rows[0]["llm_pte_sha256"] == rows[1]["llm_pte_sha256"] != ""


@pytest.fixture(scope="module")
def interrupted(tiny_release_build, tmp_path_factory):
    """A sweep killed (SIGTERM) while one of its second job's stages runs, then the same sweep
    run again. Job 0 is the session's build (restored: no stage runs); job 1 changes the chunk
    size, so it builds its corpus, its index and its answers; which of them the signal meets
    depends on the machine (a fixed wait once let job 1 finish before the signal)."""
    import signal
    import subprocess
    import time

    repo = copy_built(tiny_release_build.repo, tmp_path_factory.mktemp("killed") / "repo")
    sh(["git", "add", "-A"], repo)
    sh(["git", "commit", "-qm", "baseline", "--allow-empty"], repo)
    branch = sh(["git", "symbolic-ref", "--short", "HEAD"], repo).stdout.strip()
    params = (repo / "params.yaml").read_text()
    command = [sys.executable, "-m", "pipeline.cli", "sweep", "-m", "experiment=tiny",
               "corpus.chunk_tokens=48,40", "--name", "k"]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    sweep_run = subprocess.Popen(command, cwd=repo, env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
    first = repo / "sweeps/k/jobs/0/result.json"
    deadline = time.monotonic() + 900
    while not (first.is_file() and json.loads(first.read_text())["status"] == "ok"):
        assert sweep_run.poll() is None and time.monotonic() < deadline, sweep_run.stderr.read()
        time.sleep(1)
    while not _a_stage_runs_under(repo / ".dvc/tmp/exps"):
        assert sweep_run.poll() is None and time.monotonic() < deadline, sweep_run.stderr.read()
        time.sleep(0.2)
    sweep_run.send_signal(signal.SIGTERM)
    out, err = sweep_run.communicate(timeout=300)
    killed = {"rc": sweep_run.returncode, "stderr": err, "first": first.read_text(),
              "rows": list(csv.DictReader((repo / "sweeps/k/results.csv").open())),
              "branch": sh(["git", "symbolic-ref", "--short", "HEAD"], repo).stdout.strip(),
              "params": (repo / "params.yaml").read_text(),
              "queue": sh([sys.executable, "-m", "dvc", "queue", "status"], repo).stdout}
    resumed = sh(command, repo)
    rows = list(csv.DictReader((repo / "sweeps/k/results.csv").open()))
    return repo, branch, params, killed, resumed, rows


def _a_stage_runs_under(folder: Path) -> bool:
    """Whether a `python -m stages.<name>` process works in a DVC experiment's workspace."""
    for proc in psutil.process_iter(["cmdline", "cwd"]):
        command, cwd = proc.info["cmdline"] or [], proc.info["cwd"] or ""
        if cwd.startswith(str(folder)) and any(arg.startswith("stages.") for arg in command):
            return True
    return False


@pytest.mark.e2e
def test_a_killed_sweep_records_interrupted_jobs_and_leaves_the_workspace_as_it_was(interrupted):
    _, branch, params, killed, _, _ = interrupted
    assert killed["rc"] == 130 and killed["stderr"].strip().endswith("edgerag: interrupted.")
    assert [(row["job"], row["status"]) for row in killed["rows"]] == [
        ("0", "ok"), ("1", "interrupted")]
    assert killed["branch"] == branch and killed["params"] == params
    assert " Running" not in killed["queue"]  # its experiment was stopped, not left running


@pytest.mark.e2e
def test_a_resumed_sweep_runs_only_the_unfinished_jobs(interrupted):
    repo, _, params, killed, resumed, rows = interrupted
    assert "job 0 finished in an earlier run: k-0" in resumed.stdout
    assert (repo / "sweeps/k/jobs/0/result.json").read_text() == killed["first"]
    assert [(row["job"], row["status"]) for row in rows] == [("0", "ok"), ("1", "ok")]
    # What the kill stopped is done now: the index of job 1's chunks was built on resume, or
    # restored from the run cache when the killed run had finished it before the signal.
    log = (repo / "sweeps/k/jobs/1/dvc.out").read_text()
    assert ("Running stage 'build_index'" in log
            or "Stage 'build_index' is cached - skipping run" in log), log
    assert (repo / "params.yaml").read_text() == params
