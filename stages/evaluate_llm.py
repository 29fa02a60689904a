"""Evaluate the LLM `.pte` through the ExecuTorch runtime beside the fp32 reference (data/eval_llm).

Its own stage, so a corpus change (which re-runs the index) never re-runs the LLM evaluation.
"""

import json

from pipeline import artifacts, config, errors
from pipeline.evaluation import evaluate
from stages import output

STAGE, OUT = "evaluate_llm", "data/eval_llm"


def main() -> None:
    cfg = config.load()
    inputs = [artifacts.require(p) for p in ("data/lowered", "data/model", "data/split",
                                             "data/tasks")]
    lowered, model, split, tasks = inputs
    with output(STAGE, OUT, cfg, inputs=inputs, byte_identical=False) as out:
        result = evaluate.run(cfg, lowered.path, model.path, split.path, tasks.path)
        (out / evaluate.METRICS).write_text(json.dumps(result["metrics"], indent=2) + "\n")
        (out / "ppl_windows.json").write_text(json.dumps(result["windows"], indent=2) + "\n")


if __name__ == "__main__":
    errors.run(main)
