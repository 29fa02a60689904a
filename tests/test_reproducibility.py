"""A rebuild of the tiny config writes the same bytes, so DVC records the same hashes.

The session's tiny build (`edgerag release` on a fresh clone, a random hash seed, torch's
default threads) is compared with a second fresh clone built by `dvc repro` in another
interpreter with hash seed 1, one torch thread, the opposite HF_HUB_OFFLINE (transformers
writes that flag into a saved tokenizer_config.json unless told the files are local) and an
empty vector store. Every file
of every artifact directory is compared, manifests and torch.export archives included, and so
are the output hashes in both `dvc.lock` files. Wall time and peak RSS live in the run records
(data/runs/), which differ by nature; the evaluations time things and are not compared.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from tests.conftest import copy_repo, copy_wheels

pytestmark = pytest.mark.e2e

# Stage -> the artifact directory it writes; all but the evaluations (timings) must be identical.
IDENTICAL = {"fetch_model": "model", "split": "split", "export": "export",
             "calibrate": "calibration", "quantize": "quantized", "lower": "lowered",
             "make_tasks": "tasks", "fetch_embedder": "embedder_src",
             "compile_embedder": "embedder", "prepare_corpus": "corpus",
             "build_index": "index", "build_reranker": "reranker"}


@pytest.fixture(scope="module")
def builds(request, tmp_path_factory):
    fresh = copy_repo(tmp_path_factory.mktemp("rebuild") / "repo", "experiment=tiny")
    offline = "0" if os.environ.get("HF_HUB_OFFLINE") == "1" else "1"  # the session's opposite
    cache = tmp_path_factory.mktemp("cache")  # the wheels, but no vectors: a clean index build
    copy_wheels(Path(os.environ["EDGERAG_CACHE"]), cache)
    env = {**os.environ, "PYTHONHASHSEED": "1", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": offline,
           "EDGERAG_CACHE": str(cache),
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    done = subprocess.run([sys.executable, "-m", "dvc", "repro", *IDENTICAL], cwd=fresh,
                          env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    # Asked for only now, so that under pytest-xdist this build runs beside the session's.
    session = request.getfixturevalue("tiny_release_build")
    assert session.result.returncode == 0, session.result.stderr[-2000:]
    return session.repo, fresh


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


@pytest.mark.parametrize("stage", sorted(IDENTICAL))
def test_every_file_of_every_artifact_is_byte_identical(builds, stage):
    session, fresh = (repo / "data" / IDENTICAL[stage] for repo in builds)
    ours, theirs = _files(session), _files(fresh)
    assert "manifest.json" in ours and sorted(ours) == sorted(theirs)
    assert [name for name in ours if ours[name] != theirs[name]] == []


def _outs(repo: Path) -> dict[str, dict[str, str]]:
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    return {stage: {out["path"]: out.get("md5") for out in lock[stage]["outs"]}
            for stage in IDENTICAL}


def test_both_locks_record_the_same_artifact_hashes(builds):
    session, fresh = map(_outs, builds)
    for stage, artifact in IDENTICAL.items():
        assert session[stage][f"data/{artifact}"] == fresh[stage][f"data/{artifact}"], stage


def test_manifests_say_identical_and_run_records_say_how_each_build_ran(builds):
    session, fresh = builds
    for stage, artifact in IDENTICAL.items():
        manifest = json.loads((fresh / "data" / artifact / "manifest.json").read_text())
        expected = None if stage == "calibrate" else True  # observers' float sums: not claimed
        assert manifest["reproducibility"] == {"byte_identical": expected}, stage
    ran = {name: json.loads((repo / "data/runs/lower.json").read_text())
           for name, repo in (("session", session), ("fresh", fresh))}
    assert ran["fresh"]["python_hash_seed"] == "1" and ran["fresh"]["torch_threads"] == 1
    assert ran["session"]["python_hash_seed"] == "random"
    assert ran["session"]["torch_threads"] == torch.get_num_threads()  # torch's default here
