"""Observe the exported model on the calibration split, keeping what the scheme needs.

Schemes that need no data (torchao weight quantization) say so and record it in the manifest.
"""

from pipeline import artifacts, config, errors
from pipeline.llm import quantize
from stages import output

STAGE, OUT = "calibrate", "data/calibration"


def main() -> None:
    cfg = config.load()
    inputs = [artifacts.require(p) for p in ("data/export", "data/split", "data/model")]
    exported, split, model = inputs
    with output(STAGE, OUT, cfg, inputs=inputs) as out:
        out.notes.update(
            quantize.run_calibration(cfg, exported.path, split.path, model.path, out.path)
        )


if __name__ == "__main__":
    errors.run(main)
