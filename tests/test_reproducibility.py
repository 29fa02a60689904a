"""Two clean builds of the tiny config give byte-identical artifacts.

Each build runs the stage scripts' `main()` in graph order in a fresh interpreter with its own
working directory, hash seed and thread count, so nothing leaks from one build to the other.
Every file of every artifact directory is compared, manifests and torch.export archives included;
wall time and peak RSS live in the run records (data/runs/), which are not.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

RETRIEVAL = ("fetch_embedder", "compile_embedder", "split", "prepare_corpus")
LLM = ("fetch_model", "export", "calibrate", "quantize", "lower")
SCHEMES = ("8da4w_g32", "fp32")  # fp32 reruns calibrate → quantize → lower only


def _write_params(*overrides: str) -> None:
    from omegaconf import OmegaConf

    from pipeline import config

    cfg = config.validate(config.compose(list(overrides)))
    Path(config.PARAMS_FILE).write_text(OmegaConf.to_yaml(OmegaConf.structured(cfg)))


def _build_index_files() -> None:
    """build_index's two files from the calls it makes (`index.run` minus its measurements: the
    fp32 parity pass and recall only go to the manifest, and are the stage's slow part)."""
    from pipeline import artifacts, config
    from pipeline.retrieval import corpus, embedder, index

    cfg = config.load()
    chunks = corpus.read_chunks(Path("data/corpus") / corpus.CHUNKS)
    vectors = embedder.load_pte(Path("data/embedder")).embed(c.text for c in chunks)
    with artifacts.writer("data/index", stage="build_index", config={}) as out:
        index.build(cfg.index, vectors).save(str(out / index.INDEX))
        corpus.write_chunks(out / corpus.CHUNKS, chunks)


def build(workdir: str) -> None:
    """The tiny build into `workdir/data`, keeping each scheme's LLM artifacts in data/<scheme>/."""
    import importlib

    os.chdir(workdir)
    for number, scheme in enumerate(SCHEMES):
        _write_params("experiment=tiny", f"quant={scheme}")
        if number == 0:
            for stage in RETRIEVAL:
                importlib.import_module(f"stages.{stage}").main()
            _build_index_files()
        for stage in LLM[2:] if number else LLM:
            importlib.import_module(f"stages.{stage}").main()
        for folder in ("quantized", "lowered"):
            shutil.copytree(Path("data") / folder, Path("data") / scheme / folder)


def _start_build(root: Path, hash_seed: str, threads: str) -> subprocess.Popen:
    root.mkdir()
    shutil.copyfile(REPO / "dvc.yaml", root / "dvc.yaml")
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONHASHSEED": hash_seed,
           "OMP_NUM_THREADS": threads}
    env.pop("EDGERAG_DEBUG", None)
    return subprocess.Popen(
        [sys.executable, "-c", "import sys; from tests.test_reproducibility import build; "
                               "build(sys.argv[1])", str(root)],
        cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    """Two builds side by side (one core each): hash seeds 1 and 2, 1 and 2 torch threads."""
    root = tmp_path_factory.mktemp("repro")
    running = [_start_build(root / "a", "1", "1"), _start_build(root / "b", "2", "2")]
    for proc in running:
        output, _ = proc.communicate(timeout=1800)
        assert proc.returncode == 0, output[-3000:]
    return root / "a" / "data", root / "b" / "data"


def _files(data: Path) -> list[str]:
    return sorted(p.relative_to(data).as_posix() for p in data.rglob("*")
                  if p.is_file() and p.relative_to(data).parts[0] != "runs")


def test_every_file_is_byte_identical(builds):
    first, second = builds
    files = _files(first)
    assert files == _files(second)
    for required in ("8da4w_g32/lowered/llm.pte", "fp32/lowered/llm.pte", "embedder/embedder.pte",
                     "index/index.usearch", "index/chunks.jsonl", "corpus/chunks.jsonl",
                     "export/model.pt2", "lowered/manifest.json"):
        assert required in files
    differ = [f for f in files if (first / f).read_bytes() != (second / f).read_bytes()]
    assert differ == []


def test_manifests_say_which_stages_are_byte_identical(builds):
    first, _ = builds
    for folder, expected in {"model": True, "split": True, "export": True, "quantized": True,
                             "lowered": True, "embedder_src": True, "embedder": True,
                             "corpus": True}.items():
        record = json.loads((first / folder / "manifest.json").read_text())["reproducibility"]
        assert record == {"byte_identical": expected}, folder
    lowered = json.loads((first / "runs" / "lower.json").read_text())
    assert lowered["python_hash_seed"] == "1"
    assert lowered["torch_threads"] == 1 and lowered["torch_deterministic_algorithms"] is False
