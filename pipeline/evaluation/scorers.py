"""Next-token log-probabilities from the shipped `.pte` (runtime) or the fp32 reference (eager).

Both answer the same question — log p(ids[i] | ids[:i]) for i ≥ start — so perplexity and the
lm-eval adapter are written once and run on either. The `.pte` returns only the last position's
logits, as the phone's runner uses it: its context is prefilled in chunks through the KV cache,
then the scored tokens are fed one at a time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from pipeline import runtime


class RuntimeScorer:
    """The `.pte` in ExecuTorch's runtime."""

    def __init__(self, pte: str | Path):
        self.program = runtime.Program(pte)
        self.max_seq_len = int(self.program.constant("get_max_seq_len"))
        self.max_context_len = int(self.program.constant("get_max_context_len") or
                                   self.max_seq_len)

    def logprobs(self, ids: list[int], start: int) -> torch.Tensor:
        """Rows of log-softmax predicting ids[start:], shape [len(ids) - start, vocab]."""
        assert 1 <= start < len(ids) <= self.max_context_len
        chunk = self.max_seq_len - 1
        for begin in range(0, start - 1, chunk):
            piece = ids[begin : min(begin + chunk, start - 1)]
            runtime.llm_logits(self.program, piece, begin)
        rows = [runtime.llm_logits(self.program, [ids[pos]], pos).float()
                for pos in range(start - 1, len(ids) - 1)]
        return torch.log_softmax(torch.stack(rows), dim=-1)


class ProgramScorer:
    """An exported (possibly fake-quantized) program on the CPU, driven like the `.pte`.

    This is how a QNN-quantized program is judged without a Snapdragon or the Qualcomm SDK: the
    converted graph carries the same quantize/dequantize steps the NPU will run. The steps that
    read only constants (the weights' dequantize) are computed once, by ExecuTorch's
    `constant_prop_pass`, not once per token: the logits are bit-identical and SmolLM2's QNN
    program scores a token 2.4x faster. The pass rewrites `program` in place.
    """

    def __init__(self, program: Any, max_context_len: int):
        from executorch.exir.passes.constant_prop_pass import constant_prop_pass

        self.module = constant_prop_pass(program).module()
        self.max_context_len = max_context_len

    def _last_logits(self, tokens: list[int], pos: int) -> torch.Tensor:
        with torch.no_grad():
            out = self.module(torch.tensor([tokens]), {"input_pos": torch.tensor([pos])})
        logits = out[0] if isinstance(out, tuple | list) else out
        return logits.reshape(-1, logits.shape[-1])[-1]

    def logprobs(self, ids: list[int], start: int) -> torch.Tensor:
        """One token per call, which every exported LLM graph (static or dynamic) accepts."""
        rows = [self._last_logits([ids[pos]], pos).float() for pos in range(len(ids) - 1)]
        return torch.log_softmax(torch.stack(rows[start - 1 :]), dim=-1)


class EagerScorer:
    """A full-logits causal LM (the fp32 transformers reference)."""

    def __init__(self, model: Any, max_context_len: int):
        self.model = model.eval()
        self.max_context_len = max_context_len

    def logprobs(self, ids: list[int], start: int) -> torch.Tensor:
        with torch.no_grad():
            logits = self.model(torch.tensor([ids])).logits[0, start - 1 : -1].float()
        return torch.log_softmax(logits, dim=-1)


def target_logprobs(scorer: Any, ids: list[int], start: int) -> torch.Tensor:
    """log p(ids[i] | ids[:i]) for i in [start, len(ids))."""
    rows = scorer.logprobs(ids, start)
    return rows.gather(1, torch.tensor(ids[start:])[:, None])[:, 0]
