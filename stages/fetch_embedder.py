"""Fetch the embedder's sentence-transformers folder (weights, tokenizer) to data/embedder_src."""

from pipeline import artifacts, config, errors, sources
from pipeline.retrieval import embedder

STAGE, OUT = "fetch_embedder", "data/embedder_src"


def main() -> None:
    cfg = config.load()
    model_dir = sources.materialize(cfg.embedder.source)
    with artifacts.writer(OUT, stage=STAGE, config=config.stage_slice(cfg, STAGE),
                          byte_identical=True) as out:
        out.notes.update(embedder.copy_source(model_dir, out.path))


if __name__ == "__main__":
    errors.run(main)
