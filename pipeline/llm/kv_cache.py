"""The KV cache's precision on XNNPACK: what each decoded token reads once per cached position.

At a RAG prompt's length the cache, not the weights, is most of what a decoded token reads: for
SmolLM2-135M at 2,000 positions an fp32 cache is 92 MB a token against ~60 MB of 4-bit linears,
so decode speed follows the cache's bytes. Three precisions, one setting (`model.kv_cache`):

- `fp32`: ExecuTorch's custom KV cache and SDPA op as export_llm builds them.
- `bf16`: the same cache and op in bfloat16 (ExecuTorch's custom SDPA runs bf16 natively): half
  the bytes; the new keys/values and the query are rounded to bf16, the output returns to fp32.
- `int8`: ExecuTorch's own per-token int8 cache and quantized SDPA op (`quantize_kv_cache`).

Imported only where ExecuTorch already is (`export.runner_transforms`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from executorch.examples.models.llama.attention import Attention
from executorch.examples.models.llama.source_transformation.custom_kv_cache import (
    CustomKVCache,
    replace_kv_cache_with_quantized_kv_cache,
)
from executorch.examples.models.llama.source_transformation.sdpa import (
    replace_sdpa_with_quantized_sdpa,
)


def transforms(precision: str) -> list[Callable[[torch.nn.Module], torch.nn.Module]]:
    """Source transforms that follow ExecuTorch's custom KV cache + SDPA replacement."""
    if precision == "bf16":
        return [_to_bf16]
    if precision == "int8":
        return [replace_kv_cache_with_quantized_kv_cache, replace_sdpa_with_quantized_sdpa]
    return []


def _to_bf16(module: torch.nn.Module) -> torch.nn.Module:
    for child in module.modules():
        if isinstance(child, Attention) and isinstance(getattr(child, "kv_cache", None),
                                                       CustomKVCache):
            old = child.kv_cache
            child.kv_cache = _Bf16KVCache(old.max_batch_size, old.max_context_length,
                                          old.n_heads, old.head_dim, dtype=torch.bfloat16)
            child.SDPA = _Bf16SDPA(child.SDPA)
    return module


class _Bf16KVCache(CustomKVCache):
    """ExecuTorch's custom KV cache, stored in bf16: new keys and values are rounded on entry."""

    def update(self, input_pos, k_val, v_val, indices=None):
        return super().update(input_pos, k_val.to(torch.bfloat16), v_val.to(torch.bfloat16),
                              indices)


class _Bf16SDPA(torch.nn.Module):
    """ExecuTorch's custom SDPA on a bf16 query and cache; its output back in fp32."""

    def __init__(self, sdpa: torch.nn.Module) -> None:
        super().__init__()
        self.sdpa = sdpa

    def forward(self, input_pos, q, k, v, bsz, seqlen, mask):
        return self.sdpa(input_pos, q.to(torch.bfloat16), k, v, bsz, seqlen, mask).to(
            torch.float32)
