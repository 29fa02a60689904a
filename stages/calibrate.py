"""Observe the exported model on the calibration split, keeping what the scheme needs.

Schemes that need no data (torchao weight quantization) say so and record it in the manifest.
"""

from pipeline import artifacts, errors, layout, params_file
from pipeline.llm import quantize
from stages import output

STAGE = "calibrate"


def main() -> None:
    cfg = params_file.load()
    inputs = [artifacts.require(p) for p in (layout.EXPORT, layout.SPLIT, layout.MODEL)]
    exported, split, model = inputs
    with output(STAGE, cfg, inputs=inputs) as out:
        out.notes.update(
            quantize.run_calibration(cfg, exported.path, split.path, model.path, out.path)
        )


if __name__ == "__main__":
    errors.run(main)
