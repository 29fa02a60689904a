"""Release deltas: an old release plus a delta is the new release, byte for byte; a delta for
another release, one naming paths outside, or an apply killed mid-way changes nothing."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from pipeline import artifacts, bundle
from pipeline.config import IndexConfig
from pipeline.errors import BadInput
from pipeline.release import delta
from pipeline.retrieval import corpus
from tests.conftest import REPO, write_tiny_release

OLD_TOPICS = ("pydoc:assert", "pydoc:for", "pydoc:with")
NEW_TOPICS = ("pydoc:assert", "pydoc:for", "pydoc:if")  # `with` removed, `if` added
METRICS = {"llm": {"pte_bytes": 9, "ppl_delta_pct": 3.0}, "retrieval": {"recall_at_10": 1.0}}
TEMPLATE = "{% for m in messages %}{{ m['content'] }}{% endfor %}"


def _edited(doc: corpus.Document) -> corpus.Document:
    """`for` gains a paragraph; `assert` a blank first line, which moves every chunk's offsets
    and changes no chunk's text, so its chunks keep their keys."""
    if doc.source == "pydoc:for":
        return corpus.Document(doc.source, doc.text + "\n\nA paragraph the new release added.\n")
    if doc.source == "pydoc:assert":
        return corpus.Document(doc.source, "\n" + doc.text)
    return doc


@pytest.fixture(scope="module", params=["f16", "i8"])
def pair(request, tiny_cfg, tiny_ptes, tiny_embedder, tiny_embedder_source, tiny_tokenizer,
         tmp_path_factory):
    """An old and a new release of the same `.pte`s over a corpus that changed; and the delta."""
    root = tmp_path_factory.mktemp(f"delta-{request.param}")
    index_cfg = IndexConfig(dtype=request.param)

    def release(name, topics, edit=None):
        return write_tiny_release(root / name, root / f"run-{name}", tiny_cfg, tiny_ptes["fp32"],
                                  tiny_tokenizer[1], tiny_embedder[0], tiny_embedder_source,
                                  topics, METRICS, TEMPLATE, index_cfg, edit)

    old, new = release("old", OLD_TOPICS), release("new", NEW_TOPICS, _edited)
    notes = delta.write(old, new, root / "delta")
    return old, new, root / "delta", notes


def _files(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def test_old_release_plus_delta_is_the_new_release(pair, tmp_path):
    old, new, path, notes = pair
    installed = tmp_path / "installed"
    shutil.copytree(old, installed)
    delta.apply(path, installed)
    assert _files(installed) == _files(new)
    bundle.open_release(installed)
    before = {c.key: c for c in corpus.read_chunks(old / bundle.CHUNKS)}
    after = {c.key: c for c in corpus.read_chunks(new / bundle.CHUNKS)}
    moved = sum(key in before and before[key] != chunk for key, chunk in after.items())
    assert (notes["added_chunks"], notes["changed_chunks"], notes["removed_chunks"]) == (
        len(after.keys() - before.keys()), moved, len(before.keys() - after.keys()))
    assert 0 < notes["added_chunks"] < len(after) and notes["removed_chunks"] > 0 and moved > 0


def test_the_delta_carries_only_what_changed(pair):
    old, new, path, notes = pair
    shipped = set(json.loads((path / delta.TARGET).read_text())["files"])
    whole = set(notes["whole_files"])
    assert bundle.LLM not in whole and bundle.EMBEDDER not in whole  # the .ptes did not change
    rebuilt = json.loads((new / "manifest.json").read_text())["config"]["index"]["dtype"] != "i8"
    assert (bundle.INDEX in whole) is not rebuilt  # an i8 index does not round-trip: whole
    assert whole <= shipped and bundle.CHUNKS not in whole and bundle.STORE not in whole
    size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    full = sum(p.stat().st_size for p in new.rglob("*") if p.is_file())
    assert size < full / 3


def test_a_delta_for_another_base_is_refused_and_changes_nothing(
        pair, tmp_path, tiny_cfg, tiny_ptes, tiny_embedder, tiny_embedder_source, tiny_tokenizer):
    _, _, path, _ = pair
    other = write_tiny_release(tmp_path / "other", tmp_path / "run-other", tiny_cfg,
                               tiny_ptes["fp32"], tiny_tokenizer[1], tiny_embedder[0],
                               tiny_embedder_source, ("pydoc:if",), METRICS, TEMPLATE,
                               IndexConfig(), None)
    before = _files(other)
    with pytest.raises(BadInput, match=r"updates release old@.*, but .* holds other@"):
        delta.apply(path, other)
    assert _files(other) == before


def test_a_delta_never_replaces_a_folder_it_did_not_write(pair, tmp_path):
    old, new, _, _ = pair
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "notes.txt").write_text("mine")
    for out, reason in ((kept, "not empty and not a delta"), (old, "holds the release"),
                        (old.parent, "holds the release")):
        with pytest.raises(BadInput, match=reason):
            delta.write(old, new, out)
    assert (kept / "notes.txt").read_text() == "mine" and bundle.open_release(old)
    again = tmp_path / "again"
    delta.write(old, new, again)
    delta.write(old, new, again)  # a delta it wrote is replaced whole
    assert artifacts.read_manifest(again)["stage"] == delta.STAGE


def test_a_delta_naming_a_path_outside_is_refused_before_writing(pair, tmp_path):
    old, _, path, _ = pair
    installed, evil = tmp_path / "installed", tmp_path / "evil"
    shutil.copytree(old, installed)
    shutil.copytree(path, evil)
    target = json.loads((evil / delta.TARGET).read_text())
    target["files"]["../planted"] = {"sha256": "0" * 64, "bytes": 1}
    (evil / delta.TARGET).write_text(json.dumps(target))
    manifest = json.loads((evil / "manifest.json").read_text())
    entry = manifest["files"][delta.TARGET]
    entry.update(sha256=artifacts.sha256_file(evil / delta.TARGET),
                 bytes=(evil / delta.TARGET).stat().st_size)
    (evil / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BadInput, match="a path outside"):
        delta.apply(evil, installed)
    assert not (tmp_path / "planted").exists() and _files(installed) == _files(old)


def test_an_apply_killed_midway_leaves_the_old_release_verifying(pair, tmp_path):
    old, new, path, _ = pair
    installed = tmp_path / "installed"
    shutil.copytree(old, installed)
    stall = ("import time, sys\n"
             "from pipeline.retrieval import keyword\n"
             "keyword.write_store = lambda *a: time.sleep(120)\n"
             "from pipeline.release import delta\n"
             f"delta.apply({str(path)!r}, {str(installed)!r})\n")
    proc = subprocess.Popen([sys.executable, "-c", stall], cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".installed.tmp-*")) and time.monotonic() < deadline:
        assert proc.poll() is None, "the apply ended before it could be killed"
        time.sleep(0.05)
    time.sleep(0.5)  # mid-way: files copied, documents being rebuilt
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert _files(installed) == _files(old)
    bundle.open_release(installed)
    delta.apply(path, installed)  # the next apply clears the dead one's folder and finishes
    assert _files(installed) == _files(new) and not list(tmp_path.glob(".installed.*"))


def test_the_commands_write_and_apply_and_refuse_in_one_sentence(pair, tmp_path, capsys):
    from pipeline import cli

    old, new, _, _ = pair
    installed, out = tmp_path / "installed", tmp_path / "d"
    shutil.copytree(old, installed)
    for argv in (["delta", str(old), str(new), "--out", str(out)],
                 ["apply-delta", str(out), "--release", str(installed)]):
        with pytest.raises(SystemExit) as exit_:
            cli.main(argv)
        assert exit_.value.code == 0
    said = capsys.readouterr().out
    assert f"wrote {out}" in said and "is now new@" in said and _files(installed) == _files(new)
    with pytest.raises(SystemExit) as exit_:  # the same delta again: there already
        cli.main(["apply-delta", str(out), "--release", str(installed)])
    assert exit_.value.code == 0 and "is already at new@" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_:
        cli.main(["delta", str(old), str(new), "--out", str(old)])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and err.count("\n") == 0 and "holds the release" in err


def test_a_new_embedder_sends_the_index_whole(pair, tmp_path):
    """Kept chunks' vectors cannot come from the installed index when the embedder changed."""
    old, new, _, _ = pair
    changed = tmp_path / "changed"
    shutil.copytree(new, changed)
    tokenizer = changed / bundle.EMBEDDER_TOKENIZER
    tokenizer.write_bytes(tokenizer.read_bytes() + b"\n")  # other bytes, same tokenizer
    manifest = json.loads((changed / "manifest.json").read_text())
    manifest["files"][bundle.EMBEDDER_TOKENIZER] = {
        "sha256": artifacts.sha256_file(tokenizer), "bytes": tokenizer.stat().st_size}
    (changed / "manifest.json").write_text(json.dumps(manifest))
    notes = delta.write(old, changed, tmp_path / "delta")
    assert {bundle.INDEX, bundle.EMBEDDER_TOKENIZER} <= set(notes["whole_files"])
    installed = tmp_path / "installed"
    shutil.copytree(old, installed)
    delta.apply(tmp_path / "delta", installed)
    assert _files(installed) == _files(changed)
