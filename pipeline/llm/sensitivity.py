"""Sensitivity-aware mixed precision: which tensors to keep at 8 bits within a size budget.

Each candidate (every linear, the output head, the embedding) is quantized alone to the recipe's
4-bit grid in an otherwise fp32 model; the KL divergence of the next-token distributions from
fp32's, over calibration windows only, is its sensitivity. The most sensitive are then kept at
8 bits, most sensitive first, while the estimated weight bytes stay within the budget.
"""

from __future__ import annotations

from typing import Any

import torch

from pipeline.config import MixedConfig, QuantConfig
from pipeline.errors import BadInput
from pipeline.llm import families
from pipeline.progress import bar

EMBEDDING, HEAD = "tok_embeddings", "output"


def executorch_name(hf_name: str) -> str | None:
    """The ExecuTorch Llama's module name for a transformers Llama module (families' renaming)."""
    name = families.llama_weight_name(f"{hf_name}.weight")
    return None if name is None else name.removesuffix(".weight")


def tensor_bytes(shape: tuple[int, int], bits: int, group_size: int) -> int:
    """Estimated bytes of a quantized weight: codes plus one scale per group (per row at 0)."""
    rows, cols = shape
    groups = rows * (cols // group_size if group_size else 1)
    scale_bytes = 2 if bits == 4 else 4  # XNNPACK keeps 4-bit group scales in bf16
    return rows * cols * bits // 8 + groups * scale_bytes


def fake_quantize(weight: torch.Tensor, bits: int, group_size: int, symmetric: bool
                   ) -> torch.Tensor:
    """The recipe's own torchao grid, dequantized back to floats."""
    from torchao.quantization.quant_primitives import MappingType
    from torchao.quantization.quantize_.workflows.intx.intx_unpacked_to_int8_tensor import (
        IntxUnpackedToInt8Tensor,
    )

    block = (1, group_size or weight.shape[1])
    mapping = MappingType.SYMMETRIC if symmetric else MappingType.ASYMMETRIC
    quantized = IntxUnpackedToInt8Tensor.from_hp(weight, block, getattr(torch, f"int{bits}"),
                                                 mapping_type=mapping)
    return quantized.dequantize()


def _kl(reference: torch.Tensor, logits: torch.Tensor) -> float:
    ref = torch.log_softmax(reference.float(), -1)
    ours = torch.log_softmax(logits.float(), -1)
    return torch.sum(ref.exp() * (ref - ours), -1).mean().item()


def _candidates(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    found = {}
    for hf_name, module in model.named_modules():
        name = executorch_name(hf_name)
        if name and isinstance(module, torch.nn.Linear | torch.nn.Embedding):
            found[name] = module
    return found


def measure(model: torch.nn.Module, samples: list[torch.Tensor], quant: QuantConfig
            ) -> dict[str, dict[str, Any]]:
    """Per-candidate KL divergence from fp32 when only that tensor is at the recipe's 4 bits."""
    def grid(name: str, weight: torch.Tensor) -> tuple[torch.Tensor, int]:
        group = quant.group_size if name != EMBEDDING else _embedding_group(quant)
        return fake_quantize(weight, 4, group, quant.symmetric or name == EMBEDDING), group

    return measure_grids(model, samples, grid, quant.name)


def measure_grids(model: torch.nn.Module, samples: list[torch.Tensor], grid: Any, recipe: str,
                  names: set[str] | None = None) -> dict[str, dict[str, Any]]:
    """Per-candidate KL divergence from fp32 when only that tensor is on its low-bit grid.

    `grid(name, weight) -> (dequantized weight, group size)` is the recipe's grid; `names`, if
    given, limits the candidates (ExecuTorch names, e.g. `layers.0.attention.wq`).
    """
    if model.config.model_type != "llama":  # the candidates are named by Llama's layout
        raise BadInput(f"quant={recipe} measures Llama-family models; this one is "
                       f"{model.config.model_type!r}: use a fixed recipe such as quant=8da4w_g32.")
    if model.get_output_embeddings() is not None:  # untie: the head is judged on its own
        head = model.get_output_embeddings()
        head.weight = torch.nn.Parameter(head.weight.detach().clone(), requires_grad=False)
    batch = torch.stack(samples)
    with torch.no_grad():
        reference = model(batch).logits
        found = {n: m for n, m in _candidates(model).items() if names is None or n in names}
        result = {}
        for name, module in bar(sorted(found.items()), desc="sensitivity", unit="tensor"):
            original = module.weight.data
            module.weight.data, group = grid(name, original)
            result[name] = {"kl": _kl(reference, model(batch).logits),
                            "shape": list(original.shape), "group_size": group}
            module.weight.data = original
    return result


def _embedding_group(quant: QuantConfig) -> int:
    return quant.embedding.group_size if quant.embedding and quant.embedding.bits == 4 else 32


def plan(sensitivity: dict[str, dict[str, Any]], mixed: MixedConfig,
         size: Any = tensor_bytes) -> dict[str, Any]:
    """Everything at 4 bits, then the most sensitive at 8 bits (per row) while within budget.

    `size(shape, bits, group_size)` estimates a tensor's bytes on the target (XNNPACK's here).
    """
    budget = int(mixed.budget_mb * 1_000_000)
    low = {name: size(tuple(s["shape"]), 4, s["group_size"]) for name, s in sensitivity.items()}
    high = {name: size(tuple(s["shape"]), 8, 0) for name, s in sensitivity.items()}
    total = sum(low.values())
    if total > budget:
        raise BadInput(f"quant.mixed.budget_mb={mixed.budget_mb} is below the all-4-bit size of "
                       f"{total / 1e6:.1f} MB; raise the budget.")
    chosen = {name: 4 for name in sensitivity}
    for name in sorted(sensitivity, key=lambda n: -sensitivity[n]["kl"]):
        extra = high[name] - low[name]
        if total + extra <= budget:
            chosen[name] = 8
            total += extra
    return {
        "budget_bytes": budget,
        "estimated_bytes": total,
        "default_bits": 4,
        "layers": {name: {"bits": bits, "kl": round(sensitivity[name]["kl"], 6),
                          "group_size": 0 if bits == 8 else sensitivity[name]["group_size"]}
                   for name, bits in sorted(chosen.items())},
    }
