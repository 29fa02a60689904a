"""Quantize the exported LLM with the scheme in params `quant` (see conf/quant/)."""

from pipeline import artifacts, config, errors
from pipeline.llm import quantize
from stages import output

STAGE, OUT = "quantize", "data/quantized"


def main() -> None:
    cfg = config.load()
    inputs = [artifacts.require(p) for p in ("data/export", "data/calibration")]
    exported, calibration = inputs
    with output(STAGE, OUT, cfg, inputs=inputs, byte_identical=True) as out:
        out.notes.update(quantize.run(cfg, exported.path, calibration.path, out.path))


if __name__ == "__main__":
    errors.run(main)
