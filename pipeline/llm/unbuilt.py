"""What ExecuTorch 1.5.1's Llama declares in `ModelArgs` but does not build, built here.

`ModelArgs` carries Gemma 3's fields (`post_attention_norm`, `post_ffn_norm`, `act_fn`,
`embedding_scale_factor`, `local_rope_theta`, `sliding_window`), but `construct_transformer`
ignores them: only Qualcomm's static Llama reads them. `complete` makes the model it built
honour them by changing the class of the modules it made (never their names or weights), so a
checkpoint mapped by ExecuTorch's own Gemma 3 converter loads, and every source transform,
quantizer and grid after export sees ExecuTorch's module tree. Sliding windows are ExecuTorch's
ring KV cache (`replace_kv_cache_with_ring_kv_cache`, what export_llm's
`local_global_attention` applies), which its custom-op transforms carry on to the runner's cache.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from executorch.examples.models.llama.attention import AttentionMHA
from executorch.examples.models.llama.feed_forward import FeedForward
from executorch.examples.models.llama.llama_transformer import Transformer, TransformerBlock
from executorch.examples.models.llama.model_args import ActFn
from executorch.examples.models.llama.norm import RMSNorm
from executorch.examples.models.llama.rope import Rope

SLIDING = "sliding_attention"


def complete(model: torch.nn.Module, args: Any) -> torch.nn.Module:
    """Give the built Transformer the blocks its `ModelArgs` ask for and it lacks."""
    if args.embedding_scale_factor != 1.0:
        model.__class__ = ScaledEmbeddingTransformer
        model.embedding_scale = float(args.embedding_scale_factor)
    local_rope = _local_rope(args)
    for layer_id, block in enumerate(model.layers):
        if args.post_attention_norm:
            block.__class__ = PostNormedBlock
            block.post_attention_norm = _norm(args)
        if args.post_ffn_norm:  # ExecuTorch's block applies a `post_ffn_norm` when it has one
            block.post_ffn_norm = _norm(args)
        if args.act_fn != ActFn.SILU:
            block.feed_forward.__class__ = ActivatedFeedForward
            block.feed_forward.activation = args.act_fn.get_function()
        if local_rope is not None and is_sliding(args, layer_id):
            block.attention.__class__ = LocalRopeAttention
            block.attention.local_rope = local_rope  # one module shared by every local layer
    if args.sliding_window and args.use_kv_cache:
        from executorch.examples.models.llama.source_transformation.custom_kv_cache import (
            replace_kv_cache_with_ring_kv_cache,
        )

        replace_kv_cache_with_ring_kv_cache(model, window_sizes(args))
    elif args.sliding_window:
        for layer_id, block in enumerate(model.layers):
            if is_sliding(args, layer_id):
                block.attention.mask = _banded(block.attention.mask, args.sliding_window)
    return model


def is_sliding(args: Any, layer_id: int) -> bool:
    return bool(args.layer_types) and args.layer_types[layer_id] == SLIDING


def window_sizes(args: Any) -> list[int]:
    """Per layer, its sliding window (0: the layer attends to the whole context)."""
    return [args.sliding_window if is_sliding(args, i) else 0 for i in range(args.n_layers)]


class ScaledEmbeddingTransformer(Transformer):
    """Gemma scales the looked-up rows by sqrt(dim); the table (tied to the head) stays as is.

    The scale is applied here, to the rows, not in `tok_embeddings`: embedding quantization
    (ExecuTorch's `get_quant_embedding_transform`) replaces that module and would drop it.
    """

    embedding_scale: float

    def forward(self, tokens=None, attn_options=None, h=None):
        if tokens is not None and h is None:
            tokens, h = None, self.tok_embeddings(tokens) * self.embedding_scale
        return super().forward(tokens, attn_options, h)


class PostNormedBlock(TransformerBlock):
    """A norm on the attention's output before the residual add (Gemma 2/3)."""

    def _apply_attention_residual(self, x, attention_output):
        return super()._apply_attention_residual(x, self.post_attention_norm(attention_output))


class ActivatedFeedForward(FeedForward):
    """ExecuTorch's gated FFN with the activation `act_fn` names (it always applies SiLU)."""

    def forward(self, x):
        return self.w2(self.activation(self.w1(x)) * self.w3(x))


class LocalRopeAttention(AttentionMHA):
    """A sliding-window layer's rotation, from its own base frequency (Gemma 3's local layers)."""

    def forward(self, x, freqs_cos, freqs_sin, **kwargs):
        freqs_cos, freqs_sin = self.local_rope.get_freqs(kwargs.get("input_pos"), x.shape[1])
        return super().forward(x, freqs_cos, freqs_sin, **kwargs)


def _norm(args: Any) -> RMSNorm:
    return RMSNorm(args.dim, eps=args.norm_eps, add_unit_offset=args.rms_norm_add_unit_offset)


def _local_rope(args: Any) -> Rope | None:
    if args.local_rope_theta is None or args.local_rope_theta == args.rope_freq_base:
        return None
    return Rope(dataclasses.replace(args, rope_theta=float(args.local_rope_theta)))


def _banded(mask: torch.Tensor, window: int) -> torch.Tensor:
    """The causal mask, also closed to positions `window` or more behind (no-cache path)."""
    rows = torch.arange(mask.shape[0]).unsqueeze(1)
    cols = torch.arange(mask.shape[1]).unsqueeze(0)
    return mask.masked_fill(rows - cols >= window, float("-inf"))

