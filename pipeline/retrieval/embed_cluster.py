"""Embedding on a Dask cluster: `EDGERAG_EMBED_CLUSTER=tcp://HOST:8786 dvc repro build_index`.

The texts the vector store lacks are cut into shards; every Dask worker runs the same embedder
`.pte` on its shards, and `build_index` stores and indexes the vectors as if it had computed them.

Where a vector is computed is not a build input: the `.pte` embeds one text per call, so its vector
does not depend on the process, thread count or machine (a test compares cluster and in-process
vectors bit for bit). So the cluster is an environment setting, like `EDGERAG_EMBED_WORKERS`, not
a param: pointing a build at a cluster must not make DVC rebuild an index. Workers need edgerag
installed, nothing else: no shared filesystem, since the embedder's files travel to each worker
once (Dask's broadcast scatter) and are loaded from memory. Dask, not Ray, because the sweeps'
cluster (`edgerag sweep --cluster`) already runs on it: a team runs one engine for both.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import dask_cluster, layout

ENV = "EDGERAG_EMBED_CLUSTER"
TASKS_PER_THREAD = 2  # shards per worker thread per call: a slow worker holds up less of each call
_FILES = (layout.EMBEDDER_PTE, layout.TOKENIZER, layout.EMBEDDER_META)
_LOADED = threading.local()  # per worker thread: an ExecuTorch method runs one call at a time


def address() -> str | None:
    """The Dask scheduler `build_index` embeds on, or None to embed on this machine."""
    return os.environ.get(ENV, "").strip() or None


def _embed_shard(files: dict[str, bytes], identity: str, texts: list[str]) -> np.ndarray:
    """Runs on a Dask worker: load the embedder from the shipped bytes once per thread, embed."""
    loaded = getattr(_LOADED, "embedders", None)
    if loaded is None:
        loaded = _LOADED.embedders = {}
    if identity not in loaded:
        from pipeline import runtime
        from pipeline.retrieval import embedder

        # Dask's workers and threads are the parallelism.
        runtime.bindings()._unsafe_reset_threadpool(1)
        meta = json.loads(files[layout.EMBEDDER_META])
        loaded[identity] = embedder.load_pte_bytes(
            files[layout.EMBEDDER_PTE], files[layout.TOKENIZER].decode("utf-8"), meta["dim"])
    return loaded[identity].embed(texts)


@contextmanager
def pool(embedder_dir: Path, where: str) -> Iterator[Callable[[list[str]], np.ndarray]]:
    """`embed(texts)` on the cluster at `where`, in the order given; connects on the first call
    (a build whose vectors are all stored never reaches the cluster)."""
    state: dict[str, Any] = {}
    dim = json.loads((embedder_dir / layout.EMBEDDER_META).read_text())["dim"]

    def embed(texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, dim), np.float32)
        if "client" not in state:
            client = state["client"] = dask_cluster.connect(where, ENV)
            files = {name: (embedder_dir / name).read_bytes() for name in _FILES}
            state["identity"] = hashlib.sha256(b"".join(
                hashlib.sha256(files[name]).digest() for name in _FILES)).hexdigest()
            [state["files"]] = client.scatter([files], broadcast=True)
        client = state["client"]
        threads = max(1, sum(client.nthreads().values()))  # tasks the cluster runs at once
        size = max(1, -(-len(texts) // (threads * TASKS_PER_THREAD)))
        futures = [client.submit(_embed_shard, state["files"], state["identity"],
                                 texts[start:start + size], pure=False)
                   for start in range(0, len(texts), size)]
        return np.concatenate(client.gather(futures))

    try:
        yield embed
    finally:
        if "client" in state:
            state["client"].close()
