"""Gather the LLM and retrieval figures into data/eval/metrics.json and print the summary."""

import json

from pipeline import artifacts, errors, layout, params_file
from pipeline.evaluation import contract
from stages import output

STAGE = "evaluate"


def main() -> None:
    cfg = params_file.load()
    inputs = [artifacts.require(p) for p in (layout.EVAL_LLM, layout.EVAL_QUANTIZED,
                                             layout.EVAL_RAG, layout.INDEX, layout.EMBEDDER)]
    llm, quantized, rag, index, embedder = inputs
    metrics = contract.gather(json.loads((llm / layout.METRICS).read_text()),
                              json.loads((quantized / layout.METRICS).read_text()),
                              json.loads((rag / layout.METRICS).read_text()),
                              {**index.manifest["notes"],
                               **artifacts.read_record("build_index", index)},
                              embedder.manifest["files"])
    with output(STAGE, cfg, inputs=inputs, byte_identical=False) as out:
        (out / layout.METRICS).write_text(json.dumps(metrics, indent=2) + "\n")
    print(contract.summary(metrics))


if __name__ == "__main__":
    errors.run(main)
