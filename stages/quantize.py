"""Quantize the exported LLM with the scheme in params `quant` (see conf/quant/)."""

from pipeline import artifacts, errors, layout, params_file
from pipeline.llm import gguf_grids, quantize
from stages import output

STAGE = "quantize"


def main() -> None:
    cfg = params_file.load()
    inputs = [artifacts.require(p) for p in (layout.EXPORT, layout.CALIBRATION, layout.MODEL)]
    exported, calibration, model = inputs
    with output(STAGE, cfg, inputs=inputs, byte_identical=True) as out:
        # Decoded only for the recipe that reads them (a K-quant GGUF's blocks take seconds).
        grids = gguf_grids.load(model.path) if cfg.quant.source_grid == "gguf" else {}
        out.notes.update(quantize.run(cfg, exported.path, calibration.path, out.path, grids))


if __name__ == "__main__":
    errors.run(main)
