"""Compile the embedder (pooling and normalisation inside) to data/embedder/embedder.pte.

Quantization (`embedder.quantize`) happens here, not in its own stage: torchao's `quantize_`
rewrites the eager module, which is then exported and lowered in one go.
"""

from pipeline import artifacts, config, errors
from pipeline.retrieval import embedder
from stages import output

STAGE, OUT = "compile_embedder", "data/embedder"


def main() -> None:
    cfg = config.load()
    embedder.check(cfg.embedder)
    source = artifacts.require("data/embedder_src")
    with output(STAGE, OUT, cfg, inputs=[source], byte_identical=True) as out:
        out.notes.update(embedder.compile_embedder(cfg.embedder, source.path, out.path))


if __name__ == "__main__":
    errors.run(main)
