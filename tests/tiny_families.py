"""Tiny random instances of the small-LLM families' real configs.

Each entry is the family's published `config.json` (the fields that shape the network: norms,
biases, head layout, RoPE, tied head, layer types), shrunk in width and depth only, so a test
exercises the same special features ExecuTorch must reproduce at a size that lowers in seconds.
"""

from __future__ import annotations

from typing import Any

# What the real models publish, minus sizes (tests/tiny_families.SHRUNK sets those).
REAL = {
    # meta-llama/Llama-3.2-1B-Instruct
    "llama3_2": {"model_type": "llama", "rms_norm_eps": 1e-5, "tie_word_embeddings": True,
                 "rope_theta": 500000.0,
                 "rope_scaling": {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                  "high_freq_factor": 4.0,
                                  "original_max_position_embeddings": 8192},
                 "max_position_embeddings": 131072},
    # HuggingFaceTB/SmolLM2-135M-Instruct
    "smollm2": {"model_type": "llama", "rms_norm_eps": 1e-5, "tie_word_embeddings": True,
                "rope_theta": 100000.0},
    # Qwen/Qwen2.5-0.5B-Instruct
    "qwen2_5": {"model_type": "qwen2", "rms_norm_eps": 1e-6, "tie_word_embeddings": True,
                "rope_theta": 1000000.0, "use_sliding_window": False},
    # Qwen/Qwen3-0.6B (head_dim 128 with 16 heads of a 1,024-wide stream: wider than dim/heads)
    "qwen3": {"model_type": "qwen3", "rms_norm_eps": 1e-6, "tie_word_embeddings": True,
              "rope_theta": 1000000.0, "attention_bias": False, "head_dim": 32},
    # microsoft/Phi-4-mini-instruct (partial rotary 0.75, LongRoPE; factors cut to the rotary
    # width of the shrunk head)
    "phi4_mini": {"model_type": "phi3", "rms_norm_eps": 1e-5, "tie_word_embeddings": True,
                  "rope_theta": 10000.0, "partial_rotary_factor": 0.75,
                  "original_max_position_embeddings": 4096, "max_position_embeddings": 131072,
                  "rope_scaling": {"rope_type": "longrope",
                                   "short_factor": [1.0, 1.0, 1.0, 1.0, 1.0, 1.0],
                                   "long_factor": [1.0, 1.118, 1.251, 1.399, 1.564, 1.749]}},
    # LiquidAI/LFM2-350M (short-convolution blocks; the FFN width is derived from block_ff_dim)
    "lfm2": {"model_type": "lfm2", "norm_eps": 1e-5, "tie_word_embeddings": True,
             "rope_theta": 1000000.0, "conv_L_cache": 3, "conv_bias": False,
             "block_auto_adjust_ff_dim": True, "block_ffn_dim_multiplier": 1.0,
             "block_multiple_of": 256, "layer_types": ["conv", "full_attention"]},
    # Qwen/Qwen3.5-0.8B's text model (three gated-DeltaNet layers to one attention layer; the
    # attention gated on q, QK-norm, a quarter of each head rotated)
    "qwen3_5": {"model_type": "qwen3_5_text", "rms_norm_eps": 1e-6, "tie_word_embeddings": True,
                "head_dim": 32, "linear_conv_kernel_dim": 4, "linear_key_head_dim": 16,
                "linear_value_head_dim": 16, "linear_num_key_heads": 2,
                "linear_num_value_heads": 2,
                "layer_types": ["linear_attention", "full_attention"]},
    # google/gemma-3-270m (five sliding-window layers to one global, each kind its own RoPE
    # base; head_dim and query_pre_attn_scalar shrunk together, as 256 and 256 are; the window
    # shrunk below the parity test's 100-token prefill so decoding runs past it)
    "gemma3": {"model_type": "gemma3_text", "rms_norm_eps": 1e-6, "tie_word_embeddings": True,
               "hidden_activation": "gelu_pytorch_tanh", "rope_theta": 1000000.0,
               "rope_local_base_freq": 10000.0, "head_dim": 32, "query_pre_attn_scalar": 32,
               "num_key_value_heads": 1, "sliding_window": 64,
               "layer_types": ["sliding_attention", "full_attention"]},
    # HuggingFaceTB/SmolLM3-3B (every fourth layer has no RoPE)
    "smollm3": {"model_type": "smollm3", "rms_norm_eps": 1e-6, "tie_word_embeddings": True,
                "rope_theta": 5000000.0, "no_rope_layer_interval": 4},
}

FAMILIES = tuple(REAL)
SHRUNK = {"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
          "num_key_value_heads": 2, "num_hidden_layers": 2, "max_position_embeddings": 2048}
# Enough layers to hold a NoPE layer, or both block kinds of a hybrid.
DEPTH = {"smollm3": 4, "lfm2": 2, "qwen3_5": 2}
BLOCK_FF_DIM = 384  # LFM2: 2/3 of it rounded up to 256 → an FFN 256 wide


def config(family: str, vocab_size: int, bos_id: int = 1, eos_id: int = 2) -> Any:
    """The family's shrunk transformers config."""
    from transformers import AutoConfig

    fields = dict(REAL[family])
    model_type = fields.pop("model_type")
    sizes = {**SHRUNK, "num_hidden_layers": DEPTH.get(family, SHRUNK["num_hidden_layers"])}
    for key, value in fields.items():  # explicit real fields win over the shrink defaults
        sizes[key] = value
    if model_type == "lfm2":
        sizes["intermediate_size"] = BLOCK_FF_DIM
    return AutoConfig.for_model(model_type, vocab_size=vocab_size, bos_token_id=bos_id,
                                eos_token_id=eos_id, pad_token_id=None, **sizes)


def model(family: str, vocab_size: int, layers: int | None = None, seed: int = 0) -> Any:
    """A seeded random transformers model of the family's shrunk config."""
    import torch
    from transformers import AutoModelForCausalLM

    hf_config = config(family, vocab_size)
    if layers is not None:
        hf_config.num_hidden_layers = layers
        if getattr(hf_config, "layer_types", None):
            hf_config.layer_types = hf_config.layer_types[:layers]
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(hf_config).eval()


def write_folder(family: str, folder: Any, tokenizer: Any, layers: int | None = None) -> Any:
    """The family's tiny model as a transformers folder (weights, config, tokenizer)."""
    from pipeline.llm import checkpoint

    hf = model(family, len(tokenizer), layers)
    hf.config.bos_token_id, hf.config.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
    checkpoint._save_fp32(hf, folder)
    tokenizer.save_pretrained(folder)
    return hf
