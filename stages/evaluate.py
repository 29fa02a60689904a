"""Gather the LLM and retrieval figures into data/eval/metrics.json and print the summary."""

import json

from pipeline import artifacts, config, errors
from pipeline.evaluation import evaluate
from stages import output

STAGE, OUT = "evaluate", "data/eval"


def main() -> None:
    cfg = config.load()
    inputs = [artifacts.require(p) for p in ("data/eval_llm", "data/eval_quantized",
                                             "data/eval_rag", "data/index", "data/embedder")]
    llm, quantized, rag, index, embedder = inputs
    metrics = evaluate.gather(json.loads((llm / evaluate.METRICS).read_text()),
                              json.loads((quantized / evaluate.METRICS).read_text()),
                              json.loads((rag / evaluate.METRICS).read_text()),
                              {**index.manifest["notes"],
                               **artifacts.read_record("build_index", index)},
                              embedder.manifest["files"])
    with output(STAGE, OUT, cfg, inputs=inputs, byte_identical=False) as out:
        (out / evaluate.METRICS).write_text(json.dumps(metrics, indent=2) + "\n")
    print(evaluate.summary(metrics))


if __name__ == "__main__":
    errors.run(main)
