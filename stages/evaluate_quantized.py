"""Perplexity of the quantized program on the CPU beside fp32 (data/eval_quantized).

It needs no backend toolchain, so a QNN build is judged here before anyone owns a Snapdragon
(`dvc repro evaluate_quantized`); for XNNPACK it predicts what the `.pte` will measure.
"""

import json

from pipeline import artifacts, errors, layout, params_file
from pipeline.evaluation import program
from stages import output

STAGE = "evaluate_quantized"


def main() -> None:
    cfg = params_file.load()
    inputs = [artifacts.require(p) for p in (layout.QUANTIZED, layout.MODEL, layout.SPLIT)]
    quantized, model, split = inputs
    with output(STAGE, cfg, inputs=inputs) as out:
        metrics = program.run(cfg, quantized.path, model.path, split.path)
        (out / layout.METRICS).write_text(json.dumps(metrics, indent=2) + "\n")
    print(json.dumps(metrics))


if __name__ == "__main__":
    errors.run(main)
