"""Llama weights in, one normalized transformers folder out; and its mapping to ExecuTorch's Llama.

Every source (GGUF, hub snapshot, local folder, random seed) becomes the same thing — a
transformers folder with `tokenizer.json` — so the export stage has exactly one input format.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from pipeline.config import ModelConfig, Source
from pipeline.errors import BadInput
from pipeline.progress import log
from pipeline.sources import materialize

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")

# transformers' Llama names → ExecuTorch's examples/models/llama Transformer names.
_HF_TO_META = {
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


def _check_gguf(path: Path) -> None:
    """Parse the GGUF header and tensor table so corrupt or truncated files fail clearly."""
    from gguf import GGUFReader

    try:
        reader = GGUFReader(str(path))
        arch = reader.fields["general.architecture"]
        name = bytes(arch.parts[arch.data[0]]).decode()
    except Exception as error:  # gguf raises ValueError, KeyError, IndexError... on bad bytes
        with open(path, "rb") as handle:
            looks_like_gguf = handle.read(4) == b"GGUF"
        if looks_like_gguf:  # a cut-off download: the tensor table runs past the end of the file
            raise BadInput(f"{path} is truncated or damaged: its GGUF tensor table does not fit "
                           f"the file ({type(error).__name__}).") from None
        raise BadInput(f"{path} is not a readable GGUF file ({type(error).__name__}).") from None
    if name != "llama":
        raise BadInput(f"{path} holds a {name!r} model; edgerag compiles Llama-family models.")
    end = max(t.data_offset + t.n_bytes for t in reader.tensors)
    if path.stat().st_size < end:
        raise BadInput(f"{path} is truncated: its tensors need {end} bytes.")


def load_tokenizer(payload: Path) -> Any:
    """The payload is always local (sources materialized it). Saying so keeps the saved
    tokenizer_config.json independent of HF_HUB_OFFLINE, which transformers records in it."""
    from transformers import AutoTokenizer

    if payload.is_file() and payload.suffix == ".gguf":
        _check_gguf(payload)
        return AutoTokenizer.from_pretrained(payload.parent, gguf_file=payload.name,
                                             local_files_only=True)
    if not (payload / "tokenizer.json").is_file():
        raise BadInput(f"{payload} has no tokenizer.json.")
    return AutoTokenizer.from_pretrained(payload, local_files_only=True)


def load_pretrained(payload: Path) -> Any:
    """A transformers causal LM from a GGUF file or a folder, in fp32."""
    from transformers import AutoConfig, AutoModelForCausalLM

    if payload.is_file() and payload.suffix == ".gguf":
        _check_gguf(payload)
        log(f"dequantizing {payload.name} to fp32 (transformers)")
        return AutoModelForCausalLM.from_pretrained(
            payload.parent, gguf_file=payload.name, dtype=torch.float32
        )
    if not (payload / "config.json").is_file():
        raise BadInput(f"{payload} is neither a .gguf file nor a folder with config.json.")
    model_type = AutoConfig.from_pretrained(payload).model_type
    if model_type != "llama":
        raise BadInput(f"{payload} holds a {model_type!r} model; edgerag compiles Llama models.")
    return AutoModelForCausalLM.from_pretrained(payload, dtype=torch.float32)


def random_model(source: Source, vocab_size: int, bos_id: int, eos_id: int) -> Any:
    """A seeded random Llama: same seed, same bytes."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=source.dim,
        intermediate_size=source.hidden_dim,
        num_hidden_layers=source.n_layers,
        num_attention_heads=source.n_heads,
        num_key_value_heads=source.n_kv_heads,
        max_position_embeddings=2048,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=True,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
    )
    torch.manual_seed(source.seed)
    return LlamaForCausalLM(config).eval()


def fetch(model_cfg: ModelConfig, out: Path) -> dict[str, Any]:
    """Write the normalized transformers folder for `model_cfg` into `out`; return notes."""
    source = model_cfg.source
    weights = None if source.kind == "random" else materialize(source)
    tokenizer = load_tokenizer(
        materialize(model_cfg.tokenizer_source) if model_cfg.tokenizer_source else weights
    )
    if weights is None:
        model = random_model(source, len(tokenizer), tokenizer.bos_token_id,
                             tokenizer.eos_token_id)
    else:
        model = load_pretrained(weights)
    _save_fp32(model, out)
    tokenizer.save_pretrained(out)
    config = model.config
    return {
        "architecture": config.model_type,
        "parameters": sum(p.numel() for p in model.parameters()),
        "layers": config.num_hidden_layers,
        "dim": config.hidden_size,
        "vocab_size": config.vocab_size,
        "bos_id": tokenizer.bos_token_id,
        "eos_id": tokenizer.eos_token_id,
    }


def _save_fp32(model: Any, out: Path) -> None:
    """Plain fp32 safetensors + config (transformers will not re-save a GGUF-loaded model)."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.save_pretrained(out)
    model.generation_config.do_sample = False
    model.generation_config.save_pretrained(out)


def meta_params(hf_config: Any) -> dict[str, Any]:
    """ExecuTorch ModelArgs (params.json) for a transformers LlamaConfig."""
    rope = getattr(hf_config, "rope_parameters", None) or {}
    return {
        "dim": hf_config.hidden_size,
        "n_layers": hf_config.num_hidden_layers,
        "n_heads": hf_config.num_attention_heads,
        "n_kv_heads": hf_config.num_key_value_heads,
        "hidden_dim": hf_config.intermediate_size,
        "vocab_size": hf_config.vocab_size,
        "norm_eps": float(hf_config.rms_norm_eps),
        "rope_theta": float(rope.get("rope_theta", getattr(hf_config, "rope_theta", 10000.0))),
        "use_hf_rope": True,  # transformers keeps q/k in "rotate half" layout; no permutation
        "use_scaled_rope": False,
    }


def hf_to_meta(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    converted = {}
    for key, value in state_dict.items():
        for pattern, replacement in _HF_TO_META.items():
            if re.fullmatch(pattern, key):
                converted[re.sub(pattern, replacement, key)] = value
                break
        else:
            if not key.endswith("rotary_emb.inv_freq"):
                raise BadInput(f"weight {key} has no place in a Llama model.")
    converted.setdefault("output.weight", converted["tok_embeddings.weight"])  # tied head
    return converted
