"""A `.pte` (edgerag's or export_llm's) in ExecuTorch: timed through the stock runner, scored in
the runtime. Both run inside a bench worker process (see bench/worker.py)."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from bench.report import timing_sample
from pipeline.device.pieces import runner_tokenizer


def _pin_threads(threads: int) -> int:
    """Size ExecuTorch's shared CPU thread pool (XNNPACK runs on it); return what it reports."""
    from pipeline import runtime

    bindings = runtime.bindings()
    bindings._unsafe_reset_threadpool(threads)
    return int(bindings._threadpool_get_thread_count())


def time_generation(pte: str, tokenizer: str, prompt: str, new_tokens: int, repeats: int,
                    threads: int) -> dict[str, Any]:
    """One warm-up, then `repeats` greedy generations of up to `new_tokens` on the outer clock."""
    from pipeline.runtime import register_llm_kernels, runner_rates, text_runner

    register_llm_kernels()  # before the clock: the construction time is the runner's own
    from executorch.extension.llm.runner import GenerationConfig

    pool = _pin_threads(threads)
    workdir = tempfile.TemporaryDirectory(prefix="edgerag-bench-")  # pieces undecoded (pieces.py)
    raw_tokenizer = runner_tokenizer(Path(tokenizer), Path(workdir.name))[0]
    begin = time.monotonic()
    runner = text_runner(pte, raw_tokenizer)
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
        rates = runner_rates(stats[-1])
        samples.append(timing_sample(begin, stamps[0], end, rates["prompt_tokens"],
                                     len(stamps)))
        internal.append({key: rates[key] for key in ("prefill_tok_s", "decode_tok_s",
                                                      "load_s")})
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
