"""A `.pte` (edgerag's or export_llm's) in ExecuTorch: timed through the stock runner, scored in
the runtime. Both run inside a bench worker process (see bench/worker.py)."""

from __future__ import annotations

import json
import time
from typing import Any

from bench.report import timing_sample


def _pin_threads(threads: int) -> int:
    """Size ExecuTorch's shared CPU thread pool (XNNPACK runs on it); return what it reports."""
    from executorch.extension.pybindings import portable_lib

    portable_lib._unsafe_reset_threadpool(threads)
    return int(portable_lib._threadpool_get_thread_count())


def _internal_rates(report: dict[str, Any]) -> dict[str, float]:
    """The runner's own view of the same generation, from its millisecond stamps.

    Its `generated_tokens` leaves out the first token (the one prefill yields), so it is already
    the count of tokens decoded after the first.
    """
    prefill_ms = report["prompt_eval_end_ms"] - report["inference_start_ms"]
    decode_ms = report["inference_end_ms"] - report["first_token_ms"]
    return {
        "prefill_tok_s": round(report["prompt_tokens"] * 1000.0 / max(prefill_ms, 1), 2),
        "decode_tok_s": round(report["generated_tokens"] * 1000.0 / max(decode_ms, 1), 2),
    }


def time_generation(pte: str, tokenizer: str, prompt: str, new_tokens: int, repeats: int,
                    threads: int) -> dict[str, Any]:
    """One warm-up, then `repeats` greedy generations of up to `new_tokens` on the outer clock."""
    from pipeline.runtime import register_llm_kernels, text_runner

    register_llm_kernels()  # before the clock: the construction time is the runner's own
    from executorch.extension.llm.runner import GenerationConfig

    pool = _pin_threads(threads)
    begin = time.monotonic()
    runner = text_runner(pte, tokenizer)
    construct_s = time.monotonic() - begin
    config = GenerationConfig(max_new_tokens=new_tokens, temperature=0.0, echo=False,
                              num_bos=0, num_eos=0)
    samples, internal = [], []
    for _ in range(repeats + 1):
        stamps: list[float] = []
        stats: list[Any] = []
        runner.reset()
        begin = time.monotonic()
        runner.generate(prompt, config, lambda _piece, out=stamps: out.append(time.monotonic()),
                        stats.append)
        end = time.monotonic()
        report = json.loads(stats[-1].to_json_string())
        samples.append(timing_sample(begin, stamps[0], end, report["prompt_tokens"],
                                     len(stamps)))
        internal.append({**_internal_rates(report),
                         "load_s": (report["model_load_end_ms"]
                                    - report["model_load_start_ms"]) / 1000.0})
    return {"warmup": samples[0], "samples": samples[1:], "internal": internal[1:],
            "threads": pool, "construct_s": round(construct_s, 4)}


def perplexity_windows(pte: str, windows: list[list[int]]) -> dict[str, Any]:
    """Per-token NLL of every window through the runtime, as the evaluate stage scores a `.pte`."""
    from bench.quality import score_windows
    from pipeline.errors import BadInput
    from pipeline.evaluation.scorers import RuntimeScorer

    scorer = RuntimeScorer(pte)
    longest = max(len(w) for w in windows)
    if longest > scorer.max_context_len:
        raise BadInput(f"{pte} holds {scorer.max_context_len} tokens of context; the bench "
                       f"windows are {longest} long (lower --window).")
    return score_windows(scorer, windows)
