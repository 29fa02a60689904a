"""Artifacts are atomic and self-verifying: no half-written output ever looks finished."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from pipeline import artifacts
from pipeline.errors import BadInput
from tests.conftest import REPO


def _build(out, payload=b"weights"):
    with artifacts.writer(out, stage="t", config={"k": 1}) as tmp:
        (tmp / "model.bin").write_bytes(payload)
        tmp.note("answer", 42)
    return artifacts.require(out)


def test_manifest_records_hashes_config_versions_and_resources(tmp_path):
    art = _build(tmp_path / "a")
    manifest = art.manifest
    assert manifest["files"]["model.bin"]["bytes"] == 7
    assert manifest["files"]["model.bin"]["sha256"] == artifacts.sha256_file(art / "model.bin")
    assert manifest["config"] == {"k": 1} and manifest["notes"] == {"answer": 42}
    assert manifest["versions"]["torch"].startswith("2.13.0")
    assert "peak_rss_mb" not in manifest and "wall_time_s" not in manifest  # volatile


def test_identical_bytes_give_an_identical_manifest_and_the_run_record_holds_the_rest(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    for out, record in ((first, tmp_path / "runs/a.json"), (second, tmp_path / "runs/b.json")):
        with artifacts.writer(out, stage="t", config={"k": 1}, record=record) as tmp:
            (tmp / "model.bin").write_bytes(b"weights")
            sum(range(200_000))  # a different wall time each
    assert (first / "manifest.json").read_bytes() == (second / "manifest.json").read_bytes()
    facts = json.loads((tmp_path / "runs/a.json").read_text())
    assert facts["peak_rss_mb"] > 0 and facts["wall_time_s"] >= 0 and facts["stage"] == "t"
    assert facts["manifest_sha256"] == artifacts.sha256_file(first / "manifest.json")


def test_failure_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with artifacts.writer(tmp_path / "a", stage="t", config={}) as tmp:
            (tmp / "half.bin").write_bytes(b"x")
            raise RuntimeError("boom")
    assert os.listdir(tmp_path) == []


def test_failure_keeps_the_previous_finished_artifact(tmp_path):
    _build(tmp_path / "a", b"v1")
    with pytest.raises(RuntimeError):
        with artifacts.writer(tmp_path / "a", stage="t", config={}) as tmp:
            (tmp / "model.bin").write_bytes(b"v2-partial")
            raise RuntimeError("boom")
    assert (tmp_path / "a" / "model.bin").read_bytes() == b"v1"
    assert sorted(os.listdir(tmp_path)) == ["a"]


def test_sigkill_mid_write_leaves_no_finished_artifact(tmp_path):
    script = (
        "import time, sys\n"
        "from pipeline import artifacts\n"
        "with artifacts.writer(sys.argv[1], stage='t', config={}) as tmp:\n"
        "    (tmp / 'model.bin').write_bytes(b'x' * 1000)\n"
        "    print('writing', flush=True)\n"
        "    time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "a")], cwd=REPO,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "a").exists()
    with pytest.raises(BadInput, match="does not exist"):
        artifacts.require(tmp_path / "a")


def test_tampered_file_is_named(tmp_path):
    art = _build(tmp_path / "a")
    (art / "model.bin").write_bytes(b"weightz")
    with pytest.raises(BadInput, match=r"model.bin does not match its sha256"):
        artifacts.verify(art.path)


def test_missing_and_extra_files_are_named(tmp_path):
    art = _build(tmp_path / "a")
    (art / "extra.txt").write_text("?")
    with pytest.raises(BadInput, match=r"extra.txt is not listed"):
        artifacts.verify(art.path)
    (art / "extra.txt").unlink()
    (art / "model.bin").unlink()
    with pytest.raises(BadInput, match=r"model.bin is listed .* but missing"):
        artifacts.verify(art.path)


@pytest.mark.parametrize("entry", ["../outside.txt", "ABSOLUTE", "link.txt"])
def test_a_manifest_naming_a_path_outside_its_folder_is_refused(tmp_path, entry):
    """verify must not hash (nor ask open) a file the manifest points at outside the folder."""
    art = _build(tmp_path / "a")
    outside = tmp_path / "outside.txt"
    outside.write_text("secret")
    if entry == "ABSOLUTE":
        entry = str(outside)
    if entry == "link.txt":
        (art / "link.txt").symlink_to(outside)
    manifest = json.loads((art / "manifest.json").read_text())
    manifest["files"][entry] = {"sha256": artifacts.sha256_file(outside), "bytes": 6}
    (art / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BadInput, match=r"a path outside .*; refusing it"):
        artifacts.verify(art.path)


def test_newer_format_version_is_refused(tmp_path):
    art = _build(tmp_path / "a")
    manifest = json.loads((art / "manifest.json").read_text())
    manifest["format_version"] = artifacts.FORMAT_VERSION + 1
    (art / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BadInput, match=r"format version 2; .* upgrade edgerag"):
        artifacts.verify(art.path)


def test_disk_full_on_write_leaves_nothing(tmp_path, monkeypatch):
    def full(*_args, **_kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(artifacts, "_file_table", full)
    with pytest.raises(OSError, match="No space left"):
        _build(tmp_path / "a")
    assert os.listdir(tmp_path) == []


def test_atomic_write_text_replaces_whole_file(tmp_path):
    target = tmp_path / "params.yaml"
    artifacts.atomic_write_text(target, "a: 1\n")
    artifacts.atomic_write_text(target, "a: 2\n")
    assert target.read_text() == "a: 2\n" and os.listdir(tmp_path) == ["params.yaml"]


def test_verify_cli(tmp_path):
    _build(tmp_path / "a")
    ok = subprocess.run([sys.executable, "-m", "pipeline.cli", "verify", str(tmp_path / "a")],
                        cwd=REPO, capture_output=True, text=True)
    assert ok.returncode == 0 and "1 files match" in ok.stdout
    (tmp_path / "a" / "model.bin").write_bytes(b"bad")
    bad = subprocess.run([sys.executable, "-m", "pipeline.cli", "verify", str(tmp_path / "a")],
                         cwd=REPO, capture_output=True, text=True)
    assert bad.returncode == 2 and "does not match its sha256" in bad.stderr
