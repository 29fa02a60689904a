"""usearch at corpus scale: `python -m bench.index_scale [--sizes 100000,1000000] [--dim 384]`.

Random unit vectors of the embedder's width, indexed with build_index's own code
(`pipeline.retrieval.index.build` and `widen_search`) per storage dtype. For each: build time,
file size, the breadth `widen_search` picks for recall@10 ≥ 0.99 on random probe queries (as
build_index widens on half its held-out queries), then on other random queries recall@10 against
exact search and single-query latency p50/p99 at that breadth, for the index loaded into memory
and memory-mapped (`Index.restore(view=True)`, as ask opens it), with the resident memory each
costs (RSS of a fresh process). Random vectors have no cluster structure, so they are the hard
case for HNSW: real embeddings need less.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from pipeline.config import IndexConfig
from pipeline.retrieval import index

QUERIES, PROBES = 1000, 256


def _unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    rows = rng.standard_normal((n, dim)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def _rss_kb() -> int:
    """Resident memory now (not the peak): what the open index holds."""
    status = Path("/proc/self/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS")))


def _opened(path: str, view: bool, expansion: int, queries: str) -> dict:
    """In this (fresh) process: open, search one query at a time, report RSS and latency."""
    from usearch.index import Index

    qs = np.load(queries)
    before = _rss_kb()
    opened = Index.restore(path, view=view)
    opened.expansion_search = expansion
    loaded = _rss_kb()
    times = []
    for q in qs:
        started = time.perf_counter()
        opened.search(q, 10, threads=1)
        times.append(time.perf_counter() - started)
    return {"rss_after_open_mb": round((loaded - before) / 1024, 1),
            "rss_after_search_mb": round((_rss_kb() - before) / 1024, 1),
            "p50_ms": round(1000 * float(np.percentile(times, 50)), 3),
            "p99_ms": round(1000 * float(np.percentile(times, 99)), 3)}


def _measure(n: int, dim: int, dtype: str, work: Path) -> dict:
    rng = np.random.default_rng(n)
    vectors, queries, probes = _unit(rng, n, dim), _unit(rng, QUERIES, dim), _unit(rng, PROBES, dim)
    keys = np.arange(n, dtype=np.uint64)
    cfg = IndexConfig(dtype=dtype)
    started = time.monotonic()
    built = index.build(cfg, vectors, keys)
    build_s = time.monotonic() - started
    expansion = index.widen_search(built, vectors, keys, probes, cfg)
    recall = index.recall_at_k(built, vectors, queries, keys=keys)
    path = work / f"{n}-{dtype}.usearch"
    built.save(str(path))
    np.save(work / "queries.npy", queries)
    del built, vectors
    row = {"vectors": n, "dim": dim, "dtype": dtype, "build_s": round(build_s, 1),
           "file_mb": round(path.stat().st_size / 1e6, 1), "expansion_search": expansion,
           "recall_at_10_queries": round(recall, 4)}
    for view in (False, True):
        code = (f"import json; from bench.index_scale import _opened; print(json.dumps(_opened("
                f"{str(path)!r}, {view}, {expansion}, {str(work / 'queries.npy')!r})))")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             check=True).stdout
        row["mapped" if view else "loaded"] = json.loads(out)
    path.unlink()
    return row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.index_scale", description=__doc__)
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--dtypes", default="f16,i8")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="edgerag-index-scale-") as tmp:
        for n in map(int, args.sizes.split(",")):
            for dtype in args.dtypes.split(","):
                print(json.dumps(_measure(n, args.dim, dtype, Path(tmp))), flush=True)


if __name__ == "__main__":
    main()
