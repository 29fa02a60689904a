"""Fetch the embedder's sentence-transformers folder (weights, tokenizer) to data/embedder_src."""

from pipeline import config, errors, sources
from pipeline.retrieval import embedder
from stages import output

STAGE = "fetch_embedder"


def main() -> None:
    cfg = config.load()
    model_dir = sources.materialize(cfg.embedder.source)
    with output(STAGE, cfg, byte_identical=True) as out:
        out.notes.update(embedder.copy_source(model_dir, out.path))


if __name__ == "__main__":
    errors.run(main)
