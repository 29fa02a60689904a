"""Evaluate the shipped `.pte` beside the fp32 reference: perplexity, lm-eval, speed, size."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from unittest import mock

from pipeline import layout
from pipeline.config import Config
from pipeline.evaluation import lm_eval_adapter, perplexity, scorers, speed
from pipeline.progress import log
from pipeline.runtime import program_bytes
from pipeline.splits import read_jsonl


def _task_manager(tasks_dir: Path) -> Any:
    """Our tasks alone: they are self-contained YAMLs, and indexing lm-eval's thousands of
    built-in task files cost more than the scoring itself on a small model (about 9 s a call)."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(tasks_dir), include_defaults=False)


def _lm_eval(scorer: Any, tokenizer: Any, tasks_dir: Path, limit: int,
             manager: Any = None) -> dict[str, float]:
    names = sorted(p.stem for p in tasks_dir.glob("*.yaml"))
    # Offline for this call only: a caller's later subprocesses keep the environment it had.
    with mock.patch.dict(os.environ, {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}):
        from lm_eval import simple_evaluate

        result = simple_evaluate(
            model=lm_eval_adapter.ScorerLM(scorer, tokenizer),
            tasks=names,
            task_manager=manager or _task_manager(tasks_dir),
            limit=limit,
            log_samples=False,
            bootstrap_iters=0,
        )
    return {name: round(result["results"][name]["acc,none"], 4) for name in names}


def run(cfg: Config, lowered: Path, model_dir: Path, split_dir: Path,
        tasks_dir: Path) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    pte = scorers.RuntimeScorer(lowered / layout.LLM_PTE)
    reference = scorers.EagerScorer(
        AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32), pte.max_context_len)
    texts = [record["text"] for record in read_jsonl(split_dir / layout.EVALUATION_SPLIT)]
    ids = perplexity.eval_tokens(texts, tokenizer, cfg.eval.ppl_max_tokens)
    windows = perplexity.windows(ids, min(cfg.eval.ppl_window, pte.max_context_len))
    log(f"perplexity: {len(ids)} held-out tokens in {len(windows)} windows")
    ppl = perplexity.score(pte, reference, windows)
    manager = _task_manager(tasks_dir)
    log("lm-eval: .pte")
    accuracy = _lm_eval(pte, tokenizer, tasks_dir, cfg.eval.tasks_limit, manager)
    log("lm-eval: fp32 reference")
    accuracy_ref = _lm_eval(reference, tokenizer, tasks_dir, cfg.eval.tasks_limit, manager)
    long_prompt = ""
    if cfg.eval.speed_long_prompt_tokens:
        room = pte.max_context_len - cfg.eval.speed_new_tokens - 1  # the runner needs one spare
        long_prompt, _ = speed.held_out_prompt(texts, lowered / layout.TOKENIZER,
                                               min(cfg.eval.speed_long_prompt_tokens, room))
    log("speed: the stock runner in a fresh process")
    timing = speed.measure(lowered / layout.LLM_PTE, lowered / layout.TOKENIZER,
                           cfg.eval.speed_new_tokens, cfg.eval.speed_repeats, long_prompt)
    llm = {key: ppl[key] for key in ("ppl", "ppl_reference", "ppl_delta_pct", "tokens")}
    # The LLM's bytes on the phone: the .pte plus its weights file (llm.ptd), when lowered so.
    llm.update({"pte_bytes": program_bytes(lowered / layout.LLM_PTE), **timing})
    tasks = {name: {"acc": accuracy[name], "acc_reference": accuracy_ref[name]}
             for name in accuracy}
    return {"metrics": {"llm": llm, "lm_eval": tasks}, "windows": ppl["windows"]}
