"""Embedding throughput: `python -m bench.embed_throughput FOLDER [--embedder DIR] [--chunks N]
[--cluster tcp://HOST:8786]`.

Chunks per second of the built embedder `.pte` (`build_index`'s own `Embedder.embed`, one text
per call) on the first N chunks of a folder, in one process with ExecuTorch's threadpool at 1
and at every core, in 1 and 2 worker processes of one thread each, and on a Dask cluster through
`build_index`'s own `embed_cluster.pool` (`--cluster`, else a local one of one single-thread
worker per core on the loopback interface; skipped without Dask). Workers are started (spawned,
as `build_index` starts them) and warmed before the clock starts; one outer clock per row, and
the start's own time beside it, from which the last row says how many chunks repay it.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from pipeline import layout
from pipeline.retrieval import corpus, embedder

_WORKER: dict = {}


def _threads(n: int) -> None:
    from pipeline import runtime

    runtime.bindings()._unsafe_reset_threadpool(n)


def _start(folder: str, threads: int) -> None:
    _threads(threads)
    _WORKER["pte"] = embedder.load_pte(Path(folder))
    _WORKER["pte"].embed(["warm up"])


def _embed(texts: list[str]) -> int:
    return len(_WORKER["pte"].embed(texts))


def _texts(folder: Path, tokenizer_file: Path, n: int) -> list[str]:
    """The first `n` chunks of the folder, cut as prepare_corpus cuts them by default."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_file))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    documents, _ = corpus.dir_documents(folder)
    chunks: list[str] = []
    for doc in documents:
        chunks += [c.text for c in corpus.chunk_document(doc, tokenizer, 200, 40)]
        if len(chunks) >= n:
            break
    return chunks[:n]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.embed_throughput", description=__doc__)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--embedder", type=Path, default=Path(layout.EMBEDDER))
    parser.add_argument("--chunks", type=int, default=256)
    parser.add_argument("--cluster", help="a Dask scheduler's address (default: start a local one)")
    args = parser.parse_args(argv)
    texts = _texts(args.folder, args.embedder / layout.TOKENIZER, args.chunks)
    cores = os.cpu_count() or 1
    in_process, rates, starts = {}, {}, {}
    for threads in sorted({1, cores}):
        _start(str(args.embedder), threads)
        started = time.monotonic()
        _embed(texts)
        in_process[threads] = len(texts) / (time.monotonic() - started)
        print(json.dumps({"workers": 0, "threads": threads, "chunks": len(texts),
                          "chunks_per_s": round(in_process[threads], 1)}), flush=True)
    for workers in (1, 2):
        opened = time.monotonic()
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                 initializer=_start, initargs=(str(args.embedder), 1)) as pool:
            list(pool.map(_embed, [["warm"]] * workers))
            started = time.monotonic()
            parts = [texts[i::workers] for i in range(workers)]
            done = sum(pool.map(_embed, parts))
            rates[workers], starts[workers] = done / (time.monotonic() - started), started - opened
        print(json.dumps({"workers": workers, "threads": 1, "chunks": done,
                          "chunks_per_s": round(rates[workers], 1),
                          "start_s": round(starts[workers], 2)}), flush=True)
    # From how many chunks the 2-process pool, start included, beats this process's threads
    # (embedder.POOL_MIN_TEXTS).
    saved_per_chunk = 1 / in_process[cores] - 1 / rates[2]
    print(json.dumps({"pool_pays_from_chunks": round(starts[2] / saved_per_chunk)
                      if saved_per_chunk > 0 else None}), flush=True)
    _on_cluster(args.embedder, texts, args.cluster, cores)


def _on_cluster(embedder_dir: Path, texts: list[str], address: str | None, cores: int) -> None:
    from contextlib import ExitStack

    from pipeline.retrieval import embed_cluster

    try:
        from distributed import LocalCluster
    except ModuleNotFoundError:
        print(json.dumps({"cluster": "skipped: pip install -e '.[cluster]'"}), flush=True)
        return
    with ExitStack() as stack:
        if address is None:
            address = stack.enter_context(LocalCluster(
                n_workers=cores, threads_per_worker=1, processes=True, host="127.0.0.1",
                dashboard_address=None)).scheduler_address
        embed = stack.enter_context(embed_cluster.pool(embedder_dir, address))
        embed(["warm"] * 2 * cores)  # ships the embedder and loads it on every worker thread
        started = time.monotonic()
        done = len(embed(texts))
        rate = done / (time.monotonic() - started)
    print(json.dumps({"cluster": address, "chunks": done, "chunks_per_s": round(rate, 1)}),
          flush=True)


if __name__ == "__main__":
    main()
