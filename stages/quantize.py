"""Quantize the exported LLM with the scheme in params `quant` (see conf/quant/)."""

from pipeline import artifacts, config, errors
from pipeline.llm import quantize

STAGE, OUT = "quantize", "data/quantized"


def main() -> None:
    cfg = config.load()
    inputs = [artifacts.require(p) for p in ("data/export", "data/calibration")]
    exported, calibration = inputs
    with artifacts.writer(OUT, stage=STAGE, config=config.stage_slice(cfg, STAGE),
                          inputs=inputs, byte_identical=False) as out:
        out.notes.update(quantize.run(cfg, exported.path, calibration.path, out.path))


if __name__ == "__main__":
    errors.run(main)
