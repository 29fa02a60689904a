"""Evaluate the LLM `.pte` through the ExecuTorch runtime beside the fp32 reference (data/eval_llm).

Its own stage, so a corpus change (which re-runs the index) never re-runs the LLM evaluation.
"""

import json

from pipeline import artifacts, errors, layout, params_file
from pipeline.evaluation import evaluate
from stages import output

STAGE = "evaluate_llm"


def main() -> None:
    cfg = params_file.load()
    inputs = [artifacts.require(p) for p in (layout.LOWERED, layout.MODEL, layout.SPLIT,
                                             layout.TASKS)]
    lowered, model, split, tasks = inputs
    with output(STAGE, cfg, inputs=inputs, byte_identical=False) as out:
        result = evaluate.run(cfg, lowered.path, model.path, split.path, tasks.path)
        (out / layout.METRICS).write_text(json.dumps(result["metrics"], indent=2) + "\n")
        (out / "ppl_windows.json").write_text(json.dumps(result["windows"], indent=2) + "\n")


if __name__ == "__main__":
    errors.run(main)
