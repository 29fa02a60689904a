"""Embed the chunks the vector store lacks with the compiled embedder and build
data/index/index.usearch from all of them.

Recall@10 against exact search (on held-out sentences from the evaluation split) and the worst
cosine between the `.pte` and fp32 embeddings are measured here and kept in the manifest notes;
how many chunks were embedded, reused and removed goes to the run record. Embedding runs in
local processes, or on a Dask cluster when EDGERAG_EMBED_CLUSTER names one (embed_cluster.py).
"""

from pathlib import Path

from pipeline import artifacts, errors, layout, params_file, splits
from pipeline.retrieval import corpus, embed_cluster, embedder, index, vectors
from stages import output

STAGE = "build_index"


def main() -> None:
    cfg = params_file.load()
    index.check(cfg.index)
    inputs = [artifacts.require(p) for p in
              (layout.EMBEDDER, layout.EMBEDDER_SOURCE, layout.CORPUS, layout.SPLIT)]
    compiled, source, chunked, split = inputs
    chunks = corpus.read_chunks(chunked / layout.CHUNKS)
    held_out = [r["text"] for r in splits.read_jsonl(split / layout.EVALUATION_SPLIT)]
    pte = embedder.load_pte(compiled.path)
    store = vectors.VectorStore(
        vectors.store_path(vectors.embedder_identity(compiled.manifest["files"])), pte.dim)
    cluster, workers = embed_cluster.address(), embedder.default_workers(len(chunks))
    pool = (embed_cluster.pool(compiled.path, cluster) if cluster
            else embedder.pte_pool(compiled.path, workers))
    with output(STAGE, cfg, inputs=inputs, byte_identical=True) as out, pool as embed:
        measured = index.run(
            cfg.index, chunks, pte, embedder.load_reference(source.path, compiled.path),
            index.held_out_queries(held_out), out.path, store, str(Path.cwd().resolve()),
            embed)
        out.timings.update({"embed_cluster": cluster} if cluster else {"embed_workers": workers})
        out.timings.update({key: measured.pop(key) for key in index.RUN_FACTS})
        out.notes.update(measured)
    store.close()


if __name__ == "__main__":
    errors.run(main)
