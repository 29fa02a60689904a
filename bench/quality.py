"""The held-out tokens every system is scored on, and the scoring itself.

The windows are cut once, in the bench's own process, with the evaluate stage's functions
(`perplexity.eval_tokens`, `perplexity.windows`) and edgerag's `tokenizer.json`; each worker gets
the same token lists, so every perplexity is over identical tokens.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any


def load_tokenizer(tokenizer_json: Path) -> Any:
    """edgerag's tokenizer.json as a transformers tokenizer (the shape `eval_tokens` calls)."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_file=str(tokenizer_json))


def held_out_windows(split_file: Path, tokenizer_json: Path, max_tokens: int,
                     window: int) -> list[list[int]]:
    from pipeline.evaluation import perplexity
    from pipeline.splits import read_jsonl

    texts = [record["text"] for record in read_jsonl(split_file)]
    ids = perplexity.eval_tokens(texts, load_tokenizer(tokenizer_json), max_tokens)
    return perplexity.windows(ids, window)


def held_out_prompt(split_file: Path, tokenizer_json: Path, length: int) -> tuple[str, list[int]]:
    """The split's text cut to exactly `length` tokens (`speed.held_out_prompt`): the `.pte`
    runners encode the text, llama.cpp gets the ids, both see the same tokens."""
    from pipeline.evaluation.speed import held_out_prompt as cut
    from pipeline.splits import read_jsonl

    return cut([record["text"] for record in read_jsonl(split_file)], tokenizer_json, length)


def tokens_sha256(windows: list[list[int]]) -> str:
    return hashlib.sha256(json.dumps(windows).encode()).hexdigest()


def score_windows(scorer: Any, windows: list[list[int]]) -> dict[str, Any]:
    """Perplexity of `scorer` over all windows (each scored from its 2nd token), and per window."""
    from pipeline.evaluation import perplexity

    begin, every, per_window = time.monotonic(), [], []
    for window in windows:
        nlls = perplexity.nll(scorer, window)
        every.extend(nlls)
        per_window.append(round(perplexity.perplexity(nlls), 4))
    return {"ppl": round(perplexity.perplexity(every), 4), "tokens": len(every),
            "windows": per_window, "seconds": round(time.monotonic() - begin, 2)}


def reference_windows(model_dir: str, windows: list[list[int]], threads: int) -> dict[str, Any]:
    """The fp32 transformers model (data/model) on the same windows: the zero of every delta."""
    import torch
    from transformers import AutoModelForCausalLM

    from pipeline.evaluation.scorers import EagerScorer

    torch.set_num_threads(threads)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    return score_windows(EagerScorer(model, max(len(w) for w in windows)), windows)
