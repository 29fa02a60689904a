"""What a corpus change costs: `python -m bench.reindex FOLDER [--embedder DIR] [--change 0.01]`.

Builds the index of a folder of documents three times through `build_index`'s own code
(`pipeline.retrieval.index.run`) with the built embedder `.pte`, in one process on one clock:

1. clean: an empty vector store, every chunk embedded;
2. changed: a share of the documents (every n-th, by path) gets one sentence appended, and the
   index is rebuilt over the same store: only the changed chunks are embedded;
3. clean again on the changed corpus with an empty store: the reference the changed build
   must equal, byte for byte.

Prints one JSON line per build and the ratio of the changed build's embedding time to the
clean build's.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from pipeline import layout
from pipeline.config import CorpusConfig, IndexConfig
from pipeline.retrieval import corpus, embedder, index
from pipeline.retrieval.vectors import VectorStore

APPENDED = "\n\nThis paragraph was added after the first build, to change the document.\n"


def _changed(documents: list[corpus.Document], share: float) -> list[corpus.Document]:
    step = max(1, round(1 / share))
    return [corpus.Document(d.source, d.text + APPENDED) if i % step == 0 else d
            for i, d in enumerate(documents)]


def _build(name: str, documents, store: VectorStore, pte, reference, tokenizer: Path,
           window: int, out: Path) -> dict:
    """One build_index run over `documents` with the default corpus settings."""
    cfg = CorpusConfig(kind="dir", path=".", chunk_tokens=200, overlap_tokens=40)
    chunks = corpus.chunk_corpus(documents, cfg, tokenizer, window)
    out.mkdir(parents=True)
    started = time.monotonic()
    notes = index.run(IndexConfig(), chunks, pte, reference,
                      index.held_out_queries([d.text for d in documents[::50]], 64), out, store,
                      "bench")
    row = {"build": name, "documents": len(documents),
           "wall_s": round(time.monotonic() - started, 1),
           **{k: notes[k] for k in ("chunks", "embedded", "reused", "removed", "embed_s",
                                    "chunks_per_s", "recall_at_10")}}
    print(json.dumps(row), flush=True)
    return row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.reindex", description=__doc__)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--embedder", type=Path, default=Path(layout.EMBEDDER))
    parser.add_argument("--source", type=Path, default=Path(layout.EMBEDDER_SOURCE))
    parser.add_argument("--change", type=float, default=0.01)
    args = parser.parse_args(argv)
    documents, _ = corpus.dir_documents(args.folder)
    pte = embedder.load_pte(args.embedder)
    reference = embedder.load_reference(args.source, args.embedder)
    fixed = (args.source / layout.TOKENIZER,
             json.loads((args.embedder / layout.EMBEDDER_META).read_text())["max_seq_len"])
    with tempfile.TemporaryDirectory(prefix="edgerag-reindex-") as tmp:
        root = Path(tmp)
        shared = VectorStore(root / "store.sqlite", pte.dim)
        clean = _build("clean", documents, shared, pte, reference, *fixed, root / "clean")
        edited = _changed(documents, args.change)
        changed = _build("changed", edited, shared, pte, reference, *fixed, root / "changed")
        _build("clean_changed", edited, VectorStore(root / "fresh.sqlite", pte.dim), pte,
               reference, *fixed, root / "clean_changed")
        same = all(_same(root / "changed" / f, root / "clean_changed" / f)
                   for f in (layout.INDEX_FILE, layout.CHUNKS, layout.STORE))
    touched = sum(a is not b for a, b in zip(documents, edited, strict=True))
    print(json.dumps({"changed_documents": touched,
                      "embed_time_ratio": round(changed["embed_s"] / clean["embed_s"], 4),
                      "changed_equals_clean_build": same}))


def _same(a: Path, b: Path) -> bool:
    return a.read_bytes() == b.read_bytes()


if __name__ == "__main__":
    main()
