"""Answer the question set through the built artifacts exactly as `edgerag ask` would answer it
(data/eval_rag): retrieval by document, answer terms, groundedness, latency. With no question set
(`rag_eval.questions` a probe file, `questions/auto.yaml`), judge retrieval on known-item probes
derived from the corpus instead (`pipeline/evaluation/probes.py`), as `auto`."""

import json
from pathlib import Path

from pipeline import artifacts, bundle, config, errors, layout, params_file
from pipeline.device.ask import Assistant, open_retrieval
from pipeline.evaluation import probes, rag
from pipeline.retrieval.corpus import read_chunks
from stages import output

STAGE = "evaluate_rag"


def main() -> None:
    cfg = params_file.load()
    inputs = [artifacts.require(p) for p in (layout.LOWERED, layout.EMBEDDER, layout.INDEX,
                                             layout.RERANKER)]
    path = Path(cfg.rag_eval.questions)
    if path.suffix in probes.SUFFIXES:
        return by_probes(cfg, inputs, path)
    sources = {chunk.source for chunk in read_chunks(inputs[2] / bundle.CHUNKS)}
    questions = rag.read_questions(path, sources)
    assistant = Assistant(bundle.run_sources(Path(".")), cfg.retrieval)
    with output(STAGE, cfg, inputs=inputs, byte_identical=False) as out:
        records = rag.ask_all(assistant, questions, cfg.retrieval.k,
                              max(cfg.retrieval.candidates, rag.NDCG_DEPTH),
                              cfg.rag_eval.max_new_tokens)
        (out / layout.QUESTIONS).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n"
                                                 for r in records))
        metrics = {split: rag.summarize(records, split) for split in rag.SPLITS}
        need = assistant.context_need([q["question"] for q in questions], cfg.retrieval.k,
                                      cfg.rag_eval.max_new_tokens)
        for split in metrics.values():
            split.update(context_tokens=assistant.context_length, context_need_tokens=need)
        (out / layout.METRICS).write_text(json.dumps(metrics, indent=2) + "\n")
    print(json.dumps(metrics))


def by_probes(cfg: config.Config, inputs: list, path: Path) -> None:
    retriever, chunks = open_retrieval(bundle.run_sources(Path(".")), cfg.retrieval)
    records = probes.evaluate(retriever, chunks, path, cfg.retrieval.k,
                              max(cfg.retrieval.candidates, rag.NDCG_DEPTH))
    metrics = {"auto": probes.summarize(records)}
    with output(STAGE, cfg, inputs=inputs, byte_identical=False) as out:
        (out / layout.QUESTIONS).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n"
                                                 for r in records))
        (out / layout.METRICS).write_text(json.dumps(metrics, indent=2) + "\n")
    print(json.dumps(metrics))


if __name__ == "__main__":
    errors.run(main)
