"""Release deltas: what a device downloads to go from one release to the next.

A delta holds the new release's manifest verbatim (`target_manifest.json`), every shipped file
that changed whole (`files/`), and for the documents only what changed: the added chunks and
those an edit moved (text, source, offsets) with their vectors as the new index stores them, the
removed keys, and the new chunk order. Chunk keys are content hashes (`corpus.chunk_key`), so a
key means the same chunk in both releases.

Applying rebuilds the three document files the way `build_index` does (`chunks.jsonl` in order,
`chunks.sqlite` by key, the usearch index by key from the kept and added vectors). For f16 and
f32 indexes a vector read back from an index and added again is stored identically, so the
rebuilt index has the new release's exact bytes; an i8 index does not round-trip, so its delta
carries the index whole, and so does a delta whose embedder changed (every vector did). The
result is checked against the target manifest file by file before it replaces the installed
release, in a sibling folder swapped in one step: a failed or interrupted apply leaves the
installed release as it was.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import artifacts, bundle, layout
from pipeline.config import IndexConfig
from pipeline.errors import BadInput
from pipeline.retrieval import corpus, index, keyword

STAGE = "delta"
TARGET, FILES_DIR = "target_manifest.json", "files"
ADDED_CHUNKS, ADDED_VECTORS = "added_chunks.jsonl", "added_vectors.npy"
REMOVED_KEYS, ORDER = "removed_keys.npy", "order.npy"
DOCUMENT_FILES = (bundle.INDEX, bundle.CHUNKS, bundle.STORE)
REBUILDABLE_DTYPES = ("f16", "f32")


def _shas(release: artifacts.Artifact) -> dict[str, str]:
    return {name: entry["sha256"] for name, entry in release.manifest["files"].items()}


def _index_config(manifest: dict[str, Any]) -> IndexConfig:
    """The index settings a release was built with (only those this version knows)."""
    settings = (manifest.get("config") or {}).get("index") or {}
    known = {f.name for f in dataclasses.fields(IndexConfig)}
    return IndexConfig(**{k: v for k, v in settings.items() if k in known})


def label(release: artifacts.Artifact) -> str:
    """How a person tells releases apart: the run and commit it was promoted from."""
    notes = release.manifest.get("notes", {})
    return f"{notes.get('run', '?')}@{str(notes.get('git_commit') or '?')[:12]}"


def _save_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as handle:  # np.save on a handle: no ".npy" appended, same bytes
        np.save(handle, array, allow_pickle=False)


def _check_out(dest: Path, *releases: Path) -> None:
    """`--out` may be new, empty, or a delta this command wrote (replaced whole); never a
    release it reads, nor a folder of anything else, which replacing would delete."""
    if not dest.exists():
        return
    for release in releases:
        if dest.resolve() == release.resolve() or release.resolve().is_relative_to(
                dest.resolve()):
            raise BadInput(f"--out {dest} holds the release {release} it reads; choose a new "
                           "folder for the delta.")
    if not dest.is_dir():
        raise BadInput(f"--out {dest} is a file; choose a new folder for the delta.")
    if any(dest.iterdir()):
        try:
            is_delta = artifacts.read_manifest(dest).get("stage") == STAGE
        except BadInput:
            is_delta = False
        if not is_delta:
            raise BadInput(f"--out {dest} is a folder that is not empty and not a delta; "
                           "choose a new folder (nothing was written).")


def write(old_path: Path, new_path: Path, dest: Path) -> dict[str, Any]:
    """The delta from release `old_path` to release `new_path`, written atomically to `dest`."""
    from usearch.index import Index

    old, new = bundle.open_release(old_path), bundle.open_release(new_path)
    if old.manifest_sha256 == new.manifest_sha256:
        raise BadInput(f"{old_path} and {new_path} are the same release; there is no delta.")
    _check_out(dest, old_path, new_path)
    old_shas, new_shas = _shas(old), _shas(new)
    same_embedder = all(old_shas.get(name) == new_shas.get(name)
                        for name in (bundle.EMBEDDER, bundle.EMBEDDER_TOKENIZER))
    # Kept chunks' vectors come from the installed index: only if they are still the vectors.
    rebuild = same_embedder and _index_config(new.manifest).dtype in REBUILDABLE_DTYPES
    whole = [name for name, sha in new_shas.items()
             if old_shas.get(name) != sha
             and (name not in DOCUMENT_FILES or (name == bundle.INDEX and not rebuild))]
    before = {c.key: c for c in corpus.read_chunks(old / bundle.CHUNKS)}
    after = corpus.read_chunks(new / bundle.CHUNKS)
    # A key is the chunk's text, source and heading, not where it sits: an edit above it moves its
    # offsets and keeps its key, so the delta carries every record that differs, new key or not.
    carried = sorted((c for c in after if before.get(c.key) != c), key=lambda c: c.key)
    changed = sum(c.key in before for c in carried)
    removed = np.array(sorted(set(before) - {c.key for c in after}), dtype=np.int64)
    new_index = Index.restore(str(new / bundle.INDEX), view=True)
    keys = np.array([c.key for c in carried], dtype=np.uint64)
    vectors = (np.stack(new_index.get(keys, dtype=np.float32)) if len(keys)
               else np.zeros((0, new_index.ndim), np.float32))
    notes = {"base_manifest_sha256": old.manifest_sha256,
             "target_manifest_sha256": new.manifest_sha256,
             "base": label(old), "target": label(new),
             "added_chunks": len(carried) - changed, "changed_chunks": changed,
             "removed_chunks": len(removed),
             "whole_files": sorted(whole)}
    with artifacts.writer(dest, stage=STAGE, config={}) as out:
        shutil.copyfile(new / layout.MANIFEST, out / TARGET)
        (out / FILES_DIR).mkdir()
        for name in whole:
            shutil.copyfile(new / name, out / FILES_DIR / name)
        corpus.write_chunks(out / ADDED_CHUNKS, carried)
        _save_npy(out / ADDED_VECTORS, vectors)
        _save_npy(out / REMOVED_KEYS, removed)
        _save_npy(out / ORDER, np.array([c.key for c in after], dtype=np.int64))
        out.notes.update(notes)
    return notes


def _rebuild_documents(installed: artifacts.Artifact, delta: artifacts.Artifact,
                       target: dict[str, Any], tmp: Path) -> None:
    from usearch.index import Index

    removed = set(np.load(delta / REMOVED_KEYS).tolist())
    chunks = {c.key: c for c in corpus.read_chunks(installed / bundle.CHUNKS)
              if c.key not in removed}
    added = corpus.read_chunks(delta / ADDED_CHUNKS)
    chunks.update((c.key, c) for c in added)
    order = np.load(delta / ORDER).tolist()
    if set(order) != set(chunks):
        raise BadInput(f"{delta.path} does not fit {installed.path}: its chunk order names chunks "
                       "the two together do not hold.")
    ordered = [chunks[key] for key in order]
    corpus.write_chunks(tmp / bundle.CHUNKS, ordered)
    keyword.write_store(tmp / bundle.STORE, ordered)
    if (delta / FILES_DIR / bundle.INDEX).is_file():
        return
    fresh = {c.key for c in added}
    kept = np.array([k for k in order if k not in fresh], dtype=np.uint64)
    old_index = Index.restore(str(installed / bundle.INDEX), view=True)
    kept_vectors = (np.stack(old_index.get(kept, dtype=np.float32)) if len(kept)
                    else np.zeros((0, old_index.ndim), np.float32))
    matrix = np.concatenate([kept_vectors, np.load(delta / ADDED_VECTORS)])
    keys = np.concatenate([kept, np.array([c.key for c in added], dtype=np.uint64)])
    index.build(_index_config(target), matrix, keys).save(str(tmp / bundle.INDEX))


def apply(delta_path: Path, release_path: Path) -> dict[str, Any]:
    """Bring the installed release at `release_path` to the delta's target version."""
    delta = artifacts.verify(delta_path)
    if delta.manifest.get("stage") != STAGE:
        raise BadInput(f"{delta_path} is not an edgerag release delta.")
    installed = bundle.open_release(release_path)
    notes = delta.manifest["notes"]
    if installed.manifest_sha256 == notes["target_manifest_sha256"]:
        return {**notes, "already": True}  # applied before: nothing to do
    if installed.manifest_sha256 != notes["base_manifest_sha256"]:
        raise BadInput(
            f"{delta_path} updates release {notes['base']} (manifest sha256 "
            f"{notes['base_manifest_sha256'][:12]}…), but {release_path} holds {label(installed)}"
            f" ({installed.manifest_sha256[:12]}…); fetch the delta from the installed release, "
            "or the full release.")
    target = json.loads((delta / TARGET).read_text())
    final = Path(release_path)
    for name in target.get("files", {}):  # before anything is written: nothing lands outside
        artifacts.inside(final, name)
    with artifacts.staged(final) as tmp:
        for name in target["files"]:
            source = artifacts.inside(delta.path / FILES_DIR, name)
            if not source.is_file() and name not in DOCUMENT_FILES:
                source = artifacts.inside(installed.path, name)
            if source.is_file():
                shutil.copyfile(source, artifacts.inside(tmp, name))
        _rebuild_documents(installed, delta, target, tmp)
        shutil.copyfile(delta / TARGET, tmp / layout.MANIFEST)
        try:
            artifacts.verify(tmp)
        except BadInput as error:
            raise BadInput(f"applying {delta_path} did not give the release it names ({error}); "
                           f"{release_path} is unchanged.") from None
    return notes


def describe(notes: dict[str, Any]) -> str:
    return (f"{notes['base']} → {notes['target']}: {notes['added_chunks']} chunks added, "
            f"{notes.get('changed_chunks', 0)} moved, {notes['removed_chunks']} removed, "
            "whole files: "
            f"{', '.join(notes['whole_files']) or 'none'}")


def main_write(old: str, new: str, out: str) -> None:
    notes = write(Path(old), Path(new), Path(out))
    size = sum(p.stat().st_size for p in Path(out).rglob("*") if p.is_file())
    print(f"wrote {out} ({size / 1e6:.2f} MB): {describe(notes)}")


def main_apply(delta_path: str, release: str) -> None:
    notes = apply(Path(delta_path), Path(release))
    if notes.get("already"):
        print(f"{release} is already at {notes['target']}, the target of {delta_path}; "
              "nothing to apply.")
        return
    print(f"{release} is now {notes['target']}; every file matches its manifest "
          f"({describe(notes)}).")
