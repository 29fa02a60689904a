"""The llama.cpp peer, through llama-cpp-python (the `bench` extra), on the source Q4_1 GGUF.

It is fed edgerag's token ids, never its own tokenization, so both sides see identical tokens;
`check_vocab` proves the GGUF's vocabulary is edgerag's, id for id, before any number is taken.
Nothing here imports torch at module level: the timing worker stays a plain llama.cpp process.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from bench.report import timing_sample
from pipeline.errors import BadInput


def available() -> bool:
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return False
    return True


def source_gguf() -> Path:
    """The default model's GGUF, from the same pinned, cached source fetch_model uses."""
    from pipeline import conf, params_file, sources

    cfg = params_file.validate(conf.compose(["model=smollm2_135m"]))
    return sources.materialize(cfg.model.source)


def check_vocab(gguf: Path, tokenizer_json: Path) -> dict[str, Any]:
    """The GGUF's token strings against tokenizer.json's, id by id; a mismatch stops the bench."""
    from gguf import GGUFReader
    from tokenizers import Tokenizer

    reader = GGUFReader(str(gguf))
    field = reader.fields["tokenizer.ggml.tokens"]
    theirs = [bytes(field.parts[i]).decode("utf-8") for i in field.data]
    kind = reader.fields.get("tokenizer.ggml.model")
    if kind is not None and bytes(kind.parts[kind.data[0]]).decode() == "llama":
        # SentencePiece vocabularies (Gemma's) keep some runs of spaces as spaces in the GGUF;
        # transformers' conversion writes them with the meta-space, as the others are: one token.
        theirs = [token.replace(" ", "\u2581") for token in theirs]
    vocab = Tokenizer.from_file(str(tokenizer_json)).get_vocab(with_added_tokens=True)
    ours = [None] * (max(vocab.values()) + 1)
    for token, index in vocab.items():
        ours[index] = token
    differing = [i for i in range(max(len(ours), len(theirs)))
                 if i >= len(ours) or i >= len(theirs) or ours[i] != theirs[i]]
    if differing:
        raise BadInput(f"{gguf.name} and {tokenizer_json} disagree on {len(differing)} token ids "
                       f"(first: {differing[0]}); the perplexities would not be comparable.")
    return {"gguf_tokens": len(theirs), "tokenizer_tokens": len(ours), "mismatches": 0}


def _open(gguf: str, context: int, threads: int, logits_all: bool) -> Any:
    from llama_cpp import Llama

    return Llama(model_path=gguf, n_ctx=context, n_batch=context, n_ubatch=context,
                 n_threads=threads, n_threads_batch=threads, logits_all=logits_all,
                 verbose=False)


def _internal_rates(llm: Any) -> dict[str, float]:
    """llama.cpp's own perf counters for the last generation (beside, not instead of, the clock)."""
    import llama_cpp

    perf = llama_cpp.llama_perf_context(llm._ctx.ctx)
    return {
        "prefill_tok_s": round(perf.n_p_eval * 1000.0 / max(perf.t_p_eval_ms, 1e-9), 2),
        "decode_tok_s": round(perf.n_eval * 1000.0 / max(perf.t_eval_ms, 1e-9), 2),
    }


def time_generation(gguf: str, prompt_ids: list[int], eos_ids: list[int], new_tokens: int,
                    repeats: int, threads: int, context: int) -> dict[str, Any]:
    """One warm-up, then `repeats` greedy generations, token by token as the runner does."""
    import llama_cpp

    begin = time.monotonic()
    llm = _open(gguf, context, threads, logits_all=False)
    construct_s = time.monotonic() - begin
    stop = set(eos_ids)
    samples, internal = [], []
    for _ in range(repeats + 1):
        llm.reset()
        llama_cpp.llama_perf_context_reset(llm._ctx.ctx)
        stamps = []
        begin = time.monotonic()
        for token in llm.generate(prompt_ids, top_k=1, top_p=1.0, min_p=0.0, temp=0.0,
                                  repeat_penalty=1.0, reset=True):
            stamps.append(time.monotonic())
            if token in stop or len(stamps) >= new_tokens:
                break
        end = time.monotonic()
        samples.append(timing_sample(begin, stamps[0], end, len(prompt_ids), len(stamps)))
        internal.append(_internal_rates(llm))
    llm.close()
    return {"warmup": samples[0], "samples": samples[1:], "internal": internal[1:],
            "threads": threads, "construct_s": round(construct_s, 4)}


class LlamaCppScorer:
    """llama.cpp with every position's logits kept: the scorer shape perplexity.nll expects."""

    def __init__(self, gguf: str, context: int, threads: int):
        self.llm = _open(gguf, context, threads, logits_all=True)
        self.max_context_len = context

    def logprobs(self, ids: list[int], start: int) -> Any:
        import numpy as np
        import torch

        self.llm.reset()
        self.llm.eval(ids)
        rows = np.asarray(self.llm.scores[start - 1 : len(ids) - 1], dtype=np.float32)
        return torch.log_softmax(torch.from_numpy(rows), dim=-1)


def perplexity_windows(gguf: str, windows: list[list[int]], threads: int) -> dict[str, Any]:
    from bench.quality import score_windows

    scorer = LlamaCppScorer(gguf, max(len(w) for w in windows), threads)
    try:
        return score_windows(scorer, windows)
    finally:
        scorer.llm.close()
