"""Evaluate the `.pte` through the ExecuTorch runtime beside the fp32 reference (data/eval)."""

import json

from pipeline import artifacts, config, errors
from pipeline.evaluation import evaluate

STAGE, OUT = "evaluate", "data/eval"


def main() -> None:
    cfg = config.load()
    inputs = [artifacts.require(p) for p in ("data/lowered", "data/model", "data/split",
                                             "data/tasks")]
    lowered, model, split, tasks = inputs
    result = evaluate.run(cfg, lowered.path, model.path, split.path, tasks.path)
    with artifacts.writer(OUT, stage=STAGE, config=config.stage_slice(cfg, STAGE),
                          inputs=inputs) as out:
        (out / "metrics.json").write_text(json.dumps(result["metrics"], indent=2) + "\n")
        (out / "ppl_windows.json").write_text(json.dumps(result["windows"], indent=2) + "\n")
    print(evaluate.summary(result["metrics"]))


if __name__ == "__main__":
    errors.run(main)
