"""lm-eval's `LM` interface answered by a scorer: the `.pte` in the runtime, or the fp32 reference.

The same class serves both, so `lm_eval.simple_evaluate` compares them on identical requests.
"""

from __future__ import annotations

from typing import Any

import torch
from lm_eval.api.model import LM

from pipeline.evaluation.scorers import target_logprobs


class ScorerLM(LM):
    def __init__(self, scorer: Any, tokenizer: Any, max_gen_toks: int = 32):
        super().__init__()
        self.scorer = scorer
        self.tokenizer = tokenizer
        self.max_length = scorer.max_context_len
        self.max_gen_toks = max_gen_toks
        self.prefix = [tokenizer.bos_token_id if tokenizer.bos_token_id is not None
                       else tokenizer.eos_token_id]

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _split(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """Encode jointly, then split, so a word boundary tokenizes as it would in running text."""
        whole = self._encode(context + continuation)
        context_ids = self._encode(context)
        cut = len(context_ids)
        while cut > 0 and whole[:cut] != context_ids[:cut]:
            cut -= 1
        return self.prefix + whole[:cut], whole[cut:]

    def loglikelihood(self, requests: list[Any]) -> list[tuple[float, bool]]:
        results = []
        for request in requests:
            context, continuation = self._split(*request.args)
            ids = (context + continuation)[-self.max_length :]
            start = len(ids) - len(continuation)
            rows = self.scorer.logprobs(ids, start)
            targets = torch.tensor(continuation)
            logprob = rows.gather(1, targets[:, None]).sum().item()
            greedy = bool((rows.argmax(dim=-1) == targets).all())
            results.append((logprob, greedy))
        return results

    def loglikelihood_rolling(self, requests: list[Any]) -> list[float]:
        from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

        results = []
        for request in requests:
            total = 0.0
            for context, target in map(make_disjoint_window, get_rolling_token_windows(
                    self._encode(request.args[0]), self.prefix[0], self.max_length, 1)):
                ids = context + target
                total += target_logprobs(self.scorer, ids, len(context)).sum().item()
            results.append(total)
        return results

    def generate_until(self, requests: list[Any]) -> list[str]:
        results = []
        for request in requests:
            context, kwargs = request.args
            until = list(kwargs.get("until", []))
            budget = int(kwargs.get("max_gen_toks", self.max_gen_toks))
            ids = (self.prefix + self._encode(context))[-(self.max_length - budget) :]
            text, generated = "", []
            for _ in range(budget):
                sequence = ids + generated
                next_id = int(self.scorer.logprobs(sequence + [0], len(sequence))[-1].argmax())
                if next_id == self.tokenizer.eos_token_id:
                    break
                generated.append(next_id)
                text = self.tokenizer.decode(generated, skip_special_tokens=True)
                if any(stop in text for stop in until):
                    break
            for stop in until:
                text = text.split(stop)[0]
            results.append(text)
        return results
