"""`edgerag sweep --cluster`: two Dask workers on the loopback interface that share nothing but a
bare git repository and a local-directory DVC remote; no stage one builds is built by the other."""

from __future__ import annotations

import csv
import json
import sys

import pytest

from tests.conftest import copy_built, sh

# The jobs differ in chunk size: each builds its own corpus, index and answers, and shares
# every LLM and embedder stage with the other.
OWN_STAGES = {"prepare_corpus", "build_index", "evaluate_rag", "evaluate"}


@pytest.fixture(scope="module")
def clustered(tiny_release_build, tmp_path_factory):
    from distributed import LocalCluster

    root = tmp_path_factory.mktemp("cluster")
    repo = copy_built(tiny_release_build.repo, root / "repo")
    sh(["git", "add", "-A"], repo)
    sh(["git", "commit", "-qm", "baseline", "--allow-empty"], repo)
    sh(["git", "clone", "-q", "--bare", str(repo), str(root / "origin.git")], root)
    sh(["git", "remote", "set-url", "origin", str(root / "origin.git")], repo)
    sh(["git", "fetch", "-q", "origin"], repo)
    dvc = [sys.executable, "-m", "dvc"]
    sh([*dvc, "remote", "add", "--local", "--default", "shared", str(root / "dvc-remote")], repo)
    sh([*dvc, "push", "--run-cache", "-q"], repo)  # what the team built before
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None, resources={"edgerag": 1}) as cluster:
        done = sh([sys.executable, "-m", "pipeline.cli", "sweep", "-m", "experiment=tiny",
                   "corpus.chunk_tokens=40,56", "--name", "c",
                   "--cluster", cluster.scheduler_address], repo, check=False)
    rows = list(csv.DictReader((repo / "sweeps/c/results.csv").open()))
    return repo, done, rows


@pytest.mark.e2e
def test_every_job_is_built_on_the_cluster_and_no_stage_twice(clustered):
    _, done, rows = clustered
    assert done.returncode == 0, done.stderr[-2000:]
    assert [(row["job"], row["status"]) for row in rows] == [("0", "ok"), ("1", "ok")]
    assert all(row["worker"] and row["llm_pte_sha256"] for row in rows)
    # Each job built only the stages its own recipe changes; everything the two recipes share
    # was built once (here: restored from the remote) before they fanned out.
    for row in rows:
        assert set(row["stages_run"].split()) == OWN_STAGES, row["stages_run"]


@pytest.mark.e2e
def test_the_clusters_experiments_come_back_here(clustered):
    repo, _, rows = clustered
    shown = json.loads(sh([sys.executable, "-m", "dvc", "exp", "show", "--json"], repo).stdout)
    text = json.dumps(shown)
    assert '"c-0"' in text and '"c-1"' in text


def test_cluster_with_jobs_fails_in_one_sentence(tmp_path):
    done = sh([sys.executable, "-m", "pipeline.cli", "sweep", "-m", "quant=8da4w_g32",
               "--jobs", "2", "--cluster", "tcp://127.0.0.1:9", "--name", "n"], tmp_path,
              check=False)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "edgerag: --cluster runs a grid's jobs on as many workers as the cluster has; "
        "drop --jobs and the Optuna sweeper."]
