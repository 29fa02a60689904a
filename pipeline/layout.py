"""Where every artifact lives: each stage's output folder and each fixed file name, named once.

Stages, promote, sweep, bundle and bench spell no path themselves; they name it from here.
`dvc.yaml` must spell the same folders (DVC reads it, not us), and
tests/test_stage_deps.py checks that every `data/` path there is one of these and that each stage
requires exactly the inputs its entry declares.
"""

from __future__ import annotations

DATA = "data"
RUNS = f"{DATA}/runs"  # each stage's run record, <stage>.json: timings that are not the bytes

# Each stage's output folder, as its dvc.yaml entry lists it under outs.
OUTPUT = {
    "fetch_model": f"{DATA}/model",
    "split": f"{DATA}/split",
    "export": f"{DATA}/export",
    "calibrate": f"{DATA}/calibration",
    "quantize": f"{DATA}/quantized",
    "lower": f"{DATA}/lowered",
    "make_tasks": f"{DATA}/tasks",
    "evaluate_llm": f"{DATA}/eval_llm",
    "evaluate_quantized": f"{DATA}/eval_quantized",
    "fetch_embedder": f"{DATA}/embedder_src",
    "compile_embedder": f"{DATA}/embedder",
    "build_reranker": f"{DATA}/reranker",
    "prepare_corpus": f"{DATA}/corpus",
    "build_index": f"{DATA}/index",
    "evaluate_rag": f"{DATA}/eval_rag",
    "evaluate": f"{DATA}/eval",
}
MODEL, SPLIT, EXPORT = OUTPUT["fetch_model"], OUTPUT["split"], OUTPUT["export"]
CALIBRATION, QUANTIZED, LOWERED = OUTPUT["calibrate"], OUTPUT["quantize"], OUTPUT["lower"]
TASKS, EVAL_LLM, EVAL_QUANTIZED = (OUTPUT["make_tasks"], OUTPUT["evaluate_llm"],
                                   OUTPUT["evaluate_quantized"])
EMBEDDER_SOURCE, EMBEDDER, RERANKER = (OUTPUT["fetch_embedder"], OUTPUT["compile_embedder"],
                                       OUTPUT["build_reranker"])
CORPUS, INDEX, EVAL_RAG, EVAL = (OUTPUT["prepare_corpus"], OUTPUT["build_index"],
                                 OUTPUT["evaluate_rag"], OUTPUT["evaluate"])

# Fixed file names inside those folders.
MANIFEST = "manifest.json"  # in every artifact folder
CALIBRATION_SPLIT, EVALUATION_SPLIT = "calibration.jsonl", "evaluation.jsonl"  # in SPLIT
PROGRAM = "model.pt2"  # in EXPORT and QUANTIZED: the exported (quantized) program
INTERFACE, METADATA = "params.json", "metadata.json"  # beside it: model args, runner metadata
OBSERVER_STATS = "stats.pt"  # in CALIBRATION: PT2E observer statistics
PLAN = "plan.json"  # in CALIBRATION: torchao's plan (8-bit tensors, fp32 head channels)
QUESTIONS = "questions.jsonl"  # in EVAL_RAG: the per-question records, beside metrics.json
METRICS = "metrics.json"  # in every evaluation folder
LLM_PTE, LLM_PTD = "llm.pte", "llm.ptd"  # in LOWERED; the .ptd only when weights are external
TOKENIZER = "tokenizer.json"  # in MODEL, LOWERED, EMBEDDER and RERANKER
TOKENIZER_CONFIG, CHAT_TEMPLATE = "tokenizer_config.json", "chat_template.jinja"
EMBEDDER_PTE, EMBEDDER_META = "embedder.pte", "embedder.json"
RERANKER_PTE, RERANKER_META = "reranker.pte", "reranker.json"
INDEX_FILE, INDEX_META = "index.usearch", "index.json"
CHUNKS = "chunks.jsonl"  # in CORPUS and INDEX
STORE = "chunks.sqlite"  # in INDEX: the chunks with their FTS5 keyword index

RUN_METRICS = f"{EVAL}/{METRICS}"  # a whole run's figures, which sweeps and promote compare
