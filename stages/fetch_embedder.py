"""Fetch the embedder's model folder (weights, config, tokenizer) to data/embedder_src."""

from pipeline import errors, params_file
from pipeline.retrieval import embedder_source
from stages import output

STAGE = "fetch_embedder"


def main() -> None:
    cfg = params_file.load()
    with output(STAGE, cfg, byte_identical=True) as out:
        out.notes.update(embedder_source.fetch(cfg.embedder, out.path))


if __name__ == "__main__":
    errors.run(main)
