"""Fetch and compile the optional cross-encoder reranker to data/reranker/reranker.pte; with no
reranker configured (the default), the artifact holds only its manifest saying so."""

from pipeline import errors, params_file, sources
from pipeline.retrieval import reranker
from stages import output

STAGE = "build_reranker"


def main() -> None:
    cfg = params_file.load()
    reranker.check(cfg.reranker)
    model_dir = sources.materialize(cfg.reranker.source) if reranker.enabled(cfg.reranker) \
        else None
    with output(STAGE, cfg, byte_identical=True) as out:
        if model_dir is None:
            out.note("reranker", "none")
        else:
            out.notes.update(reranker.compile_reranker(cfg.reranker, model_dir, out.path))


if __name__ == "__main__":
    errors.run(main)
