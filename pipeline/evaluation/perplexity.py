"""Perplexity on the evaluation split: the `.pte` and the fp32 reference on identical windows."""

from __future__ import annotations

import math
from typing import Any

from pipeline.errors import BadInput
from pipeline.evaluation.scorers import target_logprobs
from pipeline.progress import bar


def eval_tokens(texts: list[str], tokenizer: Any, max_tokens: int) -> list[int]:
    """The evaluation documents joined by blank lines, tokenized, cut to the token budget."""
    ids: list[int] = []
    for text in texts:
        ids.extend(tokenizer(text + "\n\n", add_special_tokens=False)["input_ids"])
        if len(ids) >= max_tokens:
            break
    return ids[:max_tokens]


def windows(ids: list[int], length: int) -> list[list[int]]:
    """Non-overlapping windows; a short tail is kept if it has at least two tokens."""
    chunks = [ids[i : i + length] for i in range(0, len(ids), length)]
    return [c for c in chunks if len(c) >= 2]


def nll(scorer: Any, window: list[int]) -> list[float]:
    return (-target_logprobs(scorer, window, 1)).tolist()


# exp() of a mean loss above this overflows a float: no model that still predicts text gets there.
MAX_MEAN_NLL = 700.0


def perplexity(nlls: list[float]) -> float:
    """exp(mean loss); a loss that overflows (or is NaN) means broken logits, said in one line."""
    mean = sum(nlls) / len(nlls)
    if not mean < MAX_MEAN_NLL:
        raise BadInput(f"the program scored a mean loss of {mean:.0f} nats per token on held-out "
                       "text (its perplexity overflows): its logits are broken, not merely "
                       "imprecise; try another quant recipe.")
    return math.exp(mean)


def score(pte: Any, reference: Any, chunks: list[list[int]]) -> dict[str, Any]:
    """Overall and per-window perplexity of the `.pte` and of the reference on `chunks`."""
    ours_all, ref_all, per_window = [], [], []
    for index, window in enumerate(bar(chunks, desc="perplexity windows", unit="window")):
        ours, ref = nll(pte, window), nll(reference, window)
        ours_all.extend(ours)
        ref_all.extend(ref)
        per_window.append({"window": index, "ppl": round(perplexity(ours), 4),
                           "ppl_reference": round(perplexity(ref), 4)})
    ppl, ppl_ref = perplexity(ours_all), perplexity(ref_all)
    return {
        "ppl": round(ppl, 4),
        "ppl_reference": round(ppl_ref, 4),
        "ppl_delta_pct": round(100.0 * (ppl - ppl_ref) / ppl_ref, 3),
        "tokens": len(ours_all),
        "windows": per_window,
    }
