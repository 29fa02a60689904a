"""The release bundle's format: which files a release holds and which run artifact each comes from.

One table serves both sides, `promote` copying by it and `ask` opening by it, so they cannot
drift apart. The manifest is the artifacts module's (sha256 of every file, format version,
package versions); the config is the whole params.yaml of the run, and its metrics, run and
git commit go in the manifest's notes.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from pipeline import artifacts, layout
from pipeline.errors import BadInput

STAGE = "promote"
RELEASES = "releases"
# Release file names: the run's own name where it is unique in the release.
LLM, TOKENIZER, EMBEDDER = layout.LLM_PTE, layout.TOKENIZER, layout.EMBEDDER_PTE
EMBEDDER_TOKENIZER, INDEX, CHUNKS = "embedder_tokenizer.json", layout.INDEX_FILE, layout.CHUNKS
STORE = layout.STORE  # the chunks with their FTS5 keyword index (retrieval/keyword.py)
INDEX_SETTINGS = layout.INDEX_META  # the search breadth the build measured recall at
METRICS, TOKENIZER_CONFIG = layout.METRICS, layout.TOKENIZER_CONFIG
CHAT_TEMPLATE = layout.CHAT_TEMPLATE
RERANKER, RERANKER_TOKENIZER = layout.RERANKER_PTE, "reranker_tokenizer.json"

# bundle file -> (run artifact directory, file name there); always present (README, "Releases").
FILES = {
    LLM: (layout.LOWERED, layout.LLM_PTE),
    TOKENIZER: (layout.LOWERED, layout.TOKENIZER),
    EMBEDDER: (layout.EMBEDDER, layout.EMBEDDER_PTE),
    EMBEDDER_TOKENIZER: (layout.EMBEDDER, layout.TOKENIZER),
    INDEX: (layout.INDEX, layout.INDEX_FILE),
    CHUNKS: (layout.INDEX, layout.CHUNKS),
    STORE: (layout.INDEX, layout.STORE),
    METRICS: (layout.EVAL, layout.METRICS),
}
# The chat format travels with the LLM when its source had one (ask falls back to plain text).
OPTIONAL = {
    layout.LLM_PTD: (layout.LOWERED, layout.LLM_PTD),  # weights lowered to a separate file
    TOKENIZER_CONFIG: (layout.LOWERED, layout.TOKENIZER_CONFIG),
    CHAT_TEMPLATE: (layout.LOWERED, layout.CHAT_TEMPLATE),
    INDEX_SETTINGS: (layout.INDEX, layout.INDEX_META),  # older releases lack it: usearch's default
    RERANKER: (layout.RERANKER, layout.RERANKER_PTE),  # built only when a reranker is configured
    RERANKER_TOKENIZER: (layout.RERANKER, layout.TOKENIZER),
}
# Every run artifact promote reads: the shipped ones, plus the evaluations that tie metrics to them.
RUN_DIRS = (layout.LOWERED, layout.EMBEDDER, layout.INDEX, layout.EVAL_LLM, layout.EVAL_RAG,
            layout.EVAL)
OPTIONAL_RUN_DIRS = (layout.RERANKER,)  # runs from before the reranker stage lack it


def run_sources(run_root: Path) -> dict[str, Path]:
    """Bundle file name -> the run's file it is copied from (optional ones only if present)."""
    paths = {name: run_root / folder / file for name, (folder, file) in {**FILES,
                                                                        **OPTIONAL}.items()}
    return {name: path for name, path in paths.items() if name in FILES or path.is_file()}


def write(dest: Path, run_root: Path, config: Any, notes: dict[str, Any]) -> None:
    """Copy a run's files into `dest` atomically (temp dir, manifest, rename)."""
    with artifacts.writer(dest, stage=STAGE, config=config) as out:
        for name, source in run_sources(run_root).items():
            shutil.copyfile(source, out / name)
        out.notes.update(notes)


def holds(dest: Path, run_root: Path, shas: dict[str, str]) -> bool:
    """Whether `dest` is an intact release of exactly these files (`shas`: run path -> sha256)."""
    try:
        files = artifacts.verify(dest).manifest.get("files", {})
    except BadInput:
        return False
    wanted = {name: shas.get(str(path.relative_to(run_root))) for name, path
              in run_sources(run_root).items()}
    return {name: entry["sha256"] for name, entry in files.items()} == wanted


def open_release(path: str | Path, copy_to: Path | None = None) -> artifacts.Artifact:
    """A release folder whose every file matches its manifest, with all the files ask needs;
    with `copy_to`, that verified copy of it (`artifacts.copy_verified`)."""
    root = Path(path)
    if not root.is_dir():
        raise BadInput(f"{root} is not a release folder; build one with `edgerag promote` "
                       "or pass --release.")
    release = artifacts.copy_verified(root, copy_to) if copy_to else artifacts.verify(root)
    missing = [name for name in FILES if name not in release.manifest.get("files", {})]
    if release.manifest.get("stage") != STAGE or missing:
        what = f"it has no {missing[0]}" if missing else "its manifest is not a promote's"
        raise BadInput(f"{root} is not an edgerag release: {what}.")
    return release
