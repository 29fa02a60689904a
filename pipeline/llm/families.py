"""The decoder families edgerag compiles: each maps a transformers config onto ExecuTorch's Llama.

ExecuTorch 1.5.1 builds every text-only small LLM it exports (Llama 3.x, SmolLM2, Qwen 2.5,
Qwen 3, Qwen 3.5, Phi-4-mini, LFM2) with one `llama_transformer`, switched by `ModelArgs`
fields, and ships a weight converter per family in `executorch.examples.models.<family>`. A
family here is the one place that says which converter applies and which `ModelArgs` a
transformers config implies; a config it cannot represent is refused in one sentence naming
what is missing.
"""

from __future__ import annotations

import importlib
import re
import sys
import types
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from pipeline.errors import BadInput

StateDict = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Family:
    """`converter` is ExecuTorch's HF → Meta weight converter ("module:function"); `params` adds
    the family's own `ModelArgs` to the shared ones."""

    model_type: str
    converter: str | None
    params: Callable[[Any], dict[str, Any]]
    refuse: Callable[[Any], str | None] = lambda config: None
    activations: tuple[str, ...] = ("silu",)  # ExecuTorch's FeedForward gates with SiLU


def _no_extras(config: Any) -> dict[str, Any]:
    return {}


def _llama(config: Any) -> dict[str, Any]:
    """Llama 3.x's "llama3" RoPE scaling exists only on ExecuTorch's Meta-layout rope path."""
    rope = _rope_parameters(config)
    if rope.get("rope_type", "default") == "default":
        return {}
    return {"use_hf_rope": False, "use_scaled_rope": True,
            "rope_scale_factor": int(rope["factor"]),
            "high_freq_factor": int(rope["high_freq_factor"])}


def _llama_refusal(config: Any) -> str | None:
    rope = _rope_parameters(config)
    kind = rope.get("rope_type", "default")
    if kind == "default":
        return None
    # ExecuTorch's apply_scaling fixes low_freq_factor=1 and an 8,192-token original context.
    fixed = {"low_freq_factor": 1, "original_max_position_embeddings": 8192}
    if kind != "llama3" or any(rope.get(k) != v for k, v in fixed.items()) \
            or float(rope["factor"]) != int(rope["factor"]):
        return (f"its RoPE scaling {dict(rope)} is not the Llama 3 scaling ExecuTorch 1.5.1 "
                "implements (rope_type llama3, integer factor, low_freq_factor 1, 8192 original "
                "positions)")
    return None


def _qwen2(config: Any) -> dict[str, Any]:
    return {"attention_qkv_bias": True}


def _qwen2_refusal(config: Any) -> str | None:
    if getattr(config, "use_sliding_window", False):
        return "its sliding-window attention (use_sliding_window) is not in ExecuTorch's Llama"
    return None


def _qwen3(config: Any) -> dict[str, Any]:
    return {"use_qk_norm": True, "qk_norm_before_rope": True,
            "attention_qkv_bias": bool(config.attention_bias)}


def _qwen3_5(config: Any) -> dict[str, Any]:
    """Qwen 3.5: gated-DeltaNet layers between q-gated attention layers."""
    rope = _rope_parameters(config)
    return {"use_qk_norm": True, "qk_norm_before_rope": True, "use_q_gate": True,
            "rms_norm_add_unit_offset": True,
            "partial_rotary_factor": float(rope.get("partial_rotary_factor", 0.25)),
            "layer_types": list(config.layer_types),
            **{key: getattr(config, key) for key in (
                "linear_conv_kernel_dim", "linear_key_head_dim", "linear_value_head_dim",
                "linear_num_key_heads", "linear_num_value_heads")}}


def _phi3(config: Any) -> dict[str, Any]:
    """Phi-4-mini: partial rotary embeddings with LongRoPE factors."""
    rope = _rope_parameters(config)
    extras: dict[str, Any] = {
        "partial_rotary_factor": float(rope.get("partial_rotary_factor",
                                                getattr(config, "partial_rotary_factor", 1.0)))}
    if rope.get("rope_type") == "longrope":
        extras.update({
            "rope_scaling_short_factor": list(rope["short_factor"]),
            "rope_scaling_long_factor": list(rope["long_factor"]),
            "original_max_position_embeddings": config.original_max_position_embeddings,
            "max_position_embeddings": config.max_position_embeddings,
        })
    return extras


def _phi3_refusal(config: Any) -> str | None:
    kind = _rope_parameters(config).get("rope_type", "default")
    if kind not in ("default", "longrope"):
        return f"its RoPE scaling {kind!r} is not one ExecuTorch 1.5.1 implements for Phi"
    return None


def _lfm2(config: Any) -> dict[str, Any]:
    """LFM2: short-convolution blocks between attention blocks; ExecuTorch's FeedForward takes
    the effective width, which transformers derives from `block_ff_dim` as below."""
    width = config.intermediate_size
    if config.block_auto_adjust_ff_dim:
        width = int(2 * width / 3)
        if config.block_ffn_dim_multiplier is not None:
            width = int(config.block_ffn_dim_multiplier * width)
            step = config.block_multiple_of
            width = step * ((width + step - 1) // step)
    return {"hidden_dim": width, "use_qk_norm": True, "qk_norm_before_rope": True,
            "layer_types": list(config.layer_types)}


def _lfm2_refusal(config: Any) -> str | None:
    if config.conv_L_cache != 3 or config.conv_bias:
        return ("ExecuTorch 1.5.1's ShortConvBlock has a 3-tap convolution without bias, and this "
                f"config asks for conv_L_cache={config.conv_L_cache}, conv_bias={config.conv_bias}")
    return None


def _gemma3(config: Any) -> dict[str, Any]:
    """Gemma 3: (1 + w) norms around both sublayers, QK-norm, GELU, embeddings scaled by
    sqrt(dim), and sliding-window layers with their own RoPE base between global ones
    (`pipeline/llm/unbuilt.py` builds what ExecuTorch's Llama only declares)."""
    local = _rope_parameters(config, "sliding_attention")
    return {"rms_norm_add_unit_offset": True, "use_qk_norm": True, "qk_norm_before_rope": True,
            "post_attention_norm": True, "post_ffn_norm": True, "act_fn": "gelu_approx",
            "embedding_scale_factor": config.hidden_size ** 0.5,
            "local_rope_theta": float(local["rope_theta"]),
            "layer_types": list(config.layer_types), "sliding_window": config.sliding_window}


def _gemma3_refusal(config: Any) -> str | None:
    head_dim = config.head_dim
    if config.query_pre_attn_scalar != head_dim:
        return (f"its attention scale (query_pre_attn_scalar {config.query_pre_attn_scalar}) "
                f"is not 1/sqrt(head_dim {head_dim}), the only one ExecuTorch's SDPA applies")
    if config.attn_logit_softcapping or config.final_logit_softcapping:
        return "its logit soft-capping is not in ExecuTorch's Llama"
    if getattr(config, "use_bidirectional_attention", False):
        return "its bidirectional attention is not the causal attention the runner decodes with"
    kinds = {kind: _rope_parameters(config, kind).get("rope_type", "default")
             for kind in ("full_attention", "sliding_attention")}
    if set(kinds.values()) != {"default"}:
        return f"its RoPE scaling {kinds} is not the plain RoPE ExecuTorch's Llama applies"
    return None


def _smollm3_refusal(config: Any) -> str | None:
    if any(flag == 0 for flag in (config.no_rope_layers or [])[: config.num_hidden_layers]):
        return ("its NoPE layers (no_rope_layers) are ignored by ExecuTorch 1.5.1's Llama "
                "attention, which would rotate every layer and give wrong logits")
    return None


FAMILIES = {family.model_type: family for family in (
    Family("llama", None, _llama, _llama_refusal),
    Family("qwen2", "executorch.examples.models.qwen2_5.convert_weights:qwen_2_5_hf_to_meta",
           _qwen2, _qwen2_refusal),
    Family("qwen3", "executorch.examples.models.qwen3.convert_weights:qwen_3_tune_to_meta",
           _qwen3),
    Family("phi3", "executorch.examples.models.phi_4_mini.convert_weights:phi_4_hf_to_meta",
           _phi3, _phi3_refusal),
    Family("lfm2", "executorch.examples.models.lfm2.convert_weights:lfm_2_to_meta",
           _lfm2, _lfm2_refusal),
    Family("qwen3_5_text", "executorch.examples.models.qwen3_5.convert_weights:qwen_3_5_to_meta",
           _qwen3_5),
    Family("smollm3", "executorch.examples.models.smollm3.convert_weights:smollm_to_meta",
           _no_extras, _smollm3_refusal),
    Family("gemma3_text", "executorch.examples.models.gemma3.convert_weights:gemma3_to_executorch",
           _gemma3, _gemma3_refusal, activations=("gelu_pytorch_tanh",)),
)}

def of(config: Any) -> Family:
    """The family of a transformers config, or a one-sentence refusal."""
    family = FAMILIES.get(config.model_type)
    if family is None:
        known = ", ".join(sorted(FAMILIES))
        raise BadInput(f"edgerag cannot compile a {config.model_type!r} model: the families it "
                       f"compiles are {known}.")
    reason = family.refuse(config)
    activation = (getattr(config, "hidden_activation", None)
                  or getattr(config, "hidden_act", None) or "silu")
    if activation not in family.activations:
        reason = (f"its MLP activation {activation!r} is not the "
                  f"{' or '.join(family.activations)} edgerag builds for this family")
    if reason:
        raise BadInput(f"edgerag cannot compile this {config.model_type!r} model: {reason}.")
    return family


def model_args(config: Any) -> dict[str, Any]:
    """ExecuTorch ModelArgs (params.json) for a transformers config of a known family."""
    family = of(config)
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    params = {
        "dim": config.hidden_size,
        "n_layers": config.num_hidden_layers,
        "n_heads": heads,
        "n_kv_heads": config.num_key_value_heads,
        "hidden_dim": config.intermediate_size,
        "vocab_size": config.vocab_size,
        "norm_eps": float(_norm_eps(config)),
        "rope_theta": float(_rope_parameters(config).get(
            "rope_theta", getattr(config, "rope_theta", 10000.0))),
        "use_hf_rope": True,  # transformers keeps q/k in "rotate half" layout: no permutation
        "use_scaled_rope": False,
    }
    if head_dim != config.hidden_size // heads:
        params["head_dim"] = head_dim
    params.update(family.params(config))
    return params


def to_meta(config: Any, state_dict: StateDict) -> StateDict:
    """transformers weights → ExecuTorch's Llama names, by the family's ExecuTorch converter."""
    family = of(config)
    if getattr(config, "tie_word_embeddings", False):  # converters tie a head that is absent
        state_dict = {k: v for k, v in state_dict.items() if k != "lm_head.weight"}
    if family.converter is None:
        converted = _llama_to_meta(state_dict)
    else:
        module, function = family.converter.split(":")
        converted = getattr(_import_converter(module), function)(dict(state_dict))
    converted = {k: v for k, v in converted.items() if not k.endswith("rotary_emb.inv_freq")}
    converted.setdefault("output.weight", converted["tok_embeddings.weight"])  # tied head
    if not family.params(config).get("use_hf_rope", True):  # Llama 3 scaling: Meta layout
        converted = _to_interleaved_rope(converted, config)
    return converted


# transformers' Llama names → ExecuTorch's examples/models/llama Transformer names. ExecuTorch
# ships no converter from transformers' Llama layout (its Llama path reads Meta checkpoints).
_LLAMA_TO_META = {
    r"model\.embed_tokens\.weight": "tok_embeddings.weight",
    r"model\.norm\.weight": "norm.weight",
    r"lm_head\.weight": "output.weight",
    r"model\.layers\.(\d+)\.self_attn\.q_proj\.weight": r"layers.\1.attention.wq.weight",
    r"model\.layers\.(\d+)\.self_attn\.k_proj\.weight": r"layers.\1.attention.wk.weight",
    r"model\.layers\.(\d+)\.self_attn\.v_proj\.weight": r"layers.\1.attention.wv.weight",
    r"model\.layers\.(\d+)\.self_attn\.o_proj\.weight": r"layers.\1.attention.wo.weight",
    r"model\.layers\.(\d+)\.mlp\.gate_proj\.weight": r"layers.\1.feed_forward.w1.weight",
    r"model\.layers\.(\d+)\.mlp\.down_proj\.weight": r"layers.\1.feed_forward.w2.weight",
    r"model\.layers\.(\d+)\.mlp\.up_proj\.weight": r"layers.\1.feed_forward.w3.weight",
    r"model\.layers\.(\d+)\.input_layernorm\.weight": r"layers.\1.attention_norm.weight",
    r"model\.layers\.(\d+)\.post_attention_layernorm\.weight": r"layers.\1.ffn_norm.weight",
}


def llama_weight_name(key: str) -> str | None:
    """ExecuTorch's name for one transformers Llama weight, or None if it has no place."""
    for pattern, replacement in _LLAMA_TO_META.items():
        if re.fullmatch(pattern, key):
            return re.sub(pattern, replacement, key)
    return None


def _llama_to_meta(state_dict: StateDict) -> StateDict:
    converted = {}
    for key, value in state_dict.items():
        name = llama_weight_name(key)
        if name is not None:
            converted[name] = value
        elif not key.endswith("rotary_emb.inv_freq"):
            raise BadInput(f"weight {key} has no place in a Llama model.")
    return converted


def _to_interleaved_rope(state_dict: StateDict, config: Any) -> StateDict:
    """Undo transformers' q/k permutation: Meta's rope rotates adjacent pairs, HF's halves."""
    heads = {"wq": config.num_attention_heads, "wk": config.num_key_value_heads}
    out = dict(state_dict)
    for key, weight in state_dict.items():
        match = re.fullmatch(r"layers\.\d+\.attention\.(wq|wk)\.weight", key)
        if match:
            n = heads[match.group(1)]
            rows, cols = weight.shape
            out[key] = (weight.view(n, 2, rows // n // 2, cols).transpose(1, 2)
                        .reshape(rows, cols).contiguous())
    return out


def _import_converter(module: str) -> types.ModuleType:
    """ExecuTorch's qwen2_5 and phi_4_mini converters import torchtune for one helper,
    `get_mapped_key`, which ExecuTorch also ships (`executorch.examples.models.checkpoint`).
    torchtune 0.6.1, the newest, does not import beside ExecuTorch 1.5.1's torchao (it needs
    `torchao.dtypes.nf4tensor`), so where it is absent the converter gets ExecuTorch's copy."""
    try:
        importlib.import_module("torchtune.models.convert_weights")
    except ImportError:
        from executorch.examples.models.checkpoint import get_mapped_key

        helpers = types.ModuleType("torchtune.models.convert_weights")
        helpers.get_mapped_key = get_mapped_key
        training = types.ModuleType("torchtune.training")
        training.FullModelHFCheckpointer = None  # only its torchtune-format input uses it
        sys.modules.update({"torchtune": types.ModuleType("torchtune"),
                            "torchtune.models": types.ModuleType("torchtune.models"),
                            "torchtune.models.convert_weights": helpers,
                            "torchtune.training": training})
    return importlib.import_module(module)


def _rope_parameters(config: Any, layer_type: str = "full_attention") -> dict[str, Any]:
    """transformers 5 keeps RoPE settings in `rope_parameters` (per layer type where layers
    differ, as in Gemma 3); older configs in `rope_scaling`."""
    found = dict(getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None)
                 or {})
    return dict(found.get(layer_type) or {}) if layer_type in found else found


def _norm_eps(config: Any) -> float:
    return getattr(config, "rms_norm_eps", None) or config.norm_eps
