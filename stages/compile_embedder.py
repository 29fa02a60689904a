"""Compile the embedder (pooling and normalisation inside) to data/embedder/embedder.pte.

Quantization (`embedder.quantize`) happens here, not in its own stage: torchao's `quantize_`
rewrites the eager module, which is then exported and lowered in one go.
"""

from pipeline import artifacts, errors, layout, params_file
from pipeline.retrieval import embedder
from stages import output

STAGE = "compile_embedder"


def main() -> None:
    cfg = params_file.load()
    embedder.check(cfg.embedder)
    source = artifacts.require(layout.EMBEDDER_SOURCE)
    with output(STAGE, cfg, inputs=[source], byte_identical=True) as out:
        out.notes.update(embedder.compile_embedder(cfg.embedder, source.path, out.path))


if __name__ == "__main__":
    errors.run(main)
