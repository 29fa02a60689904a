"""Quantization schemes: one small class per `quant.method`, all with the same shape.

`calibrate(...)` returns the statistics the scheme needs from real calibration text (or None,
when it needs none); `quantize(...)` turns the exported fp32 program into the quantized one.

Where the stage boundary sits follows the library: torchao's `quantize_` rewrites an eager
module's linears, so torchao schemes rebuild the eager model from the exported weights and
export again; PT2E quantizers annotate an exported graph, so PT2E schemes work on the graph.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import torch

from pipeline import layout
from pipeline.config import LayerException, QuantConfig, TensorQuant
from pipeline.errors import BadInput
from pipeline.llm import export, pt2e
from pipeline.progress import log


class NoQuantization:
    """fp32: the exported program is lowered as it is."""

    def uses_calibration(self, quant: QuantConfig) -> bool:
        return False

    def calibrate(self, quant: QuantConfig, program: Any, samples: list[torch.Tensor],
                  **context: Any) -> Any:
        return None

    def save(self, stats: Any, samples: list[torch.Tensor], out: Path) -> dict[str, Any]:
        """Write what `calibrate` measured into the calibration folder; the manifest's notes."""
        return {}

    def load(self, folder: Path) -> Any:
        """What `save` wrote, or None when calibrate measured nothing for this recipe."""
        return None

    def quantize(self, quant: QuantConfig, program: Any, params: dict, llm: Any,
                 metadata: dict, stats: Any) -> Any:
        return program


def _granularity(group_size: int) -> Any:
    from torchao.quantization.granularity import PerAxis, PerGroup

    return PerAxis(0) if group_size == 0 else PerGroup(group_size)


def _mapping(symmetric: bool) -> Any:
    from torchao.quantization.quant_primitives import MappingType

    return MappingType.SYMMETRIC if symmetric else MappingType.ASYMMETRIC


def _weight_config(bits: int, group_size: int, symmetric: bool, dynamic_activations: bool,
                   algorithm: str) -> Any:
    from torchao.quantization import (
        Int8DynamicActivationIntxWeightConfig,
        IntxWeightOnlyConfig,
    )

    dtype = getattr(torch, f"int{bits}")
    qparams = "hqq_scale_only" if algorithm == "hqq" else "affine"
    if dynamic_activations:
        return Int8DynamicActivationIntxWeightConfig(
            weight_dtype=dtype,
            weight_granularity=_granularity(group_size),
            weight_mapping_type=_mapping(symmetric),
            intx_choose_qparams_algorithm=qparams,
        )
    return IntxWeightOnlyConfig(
        weight_dtype=dtype,
        granularity=_granularity(group_size),
        mapping_type=_mapping(symmetric),
        intx_choose_qparams_algorithm=qparams,
    )


def _check_widths(model: torch.nn.Module, group_size: int) -> None:
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and group_size and module.in_features % group_size:
            raise BadInput(
                f"quant.group_size={group_size} does not divide {name}'s width "
                f"{module.in_features}; pick a divisor of it (or 0 for per channel)."
            )


class TorchaoWeights(NoQuantization):
    """torchao `quantize_`: linears at `bits`/`group_size`, embedding and head on their own.

    Weight grids need no calibration data, except for mixed precision (`quant.mixed`), whose
    per-tensor sensitivities are measured on the calibration split (pipeline/llm/sensitivity.py).
    """

    def uses_calibration(self, quant: QuantConfig) -> bool:
        return quant.mixed is not None or quant.head_outliers > 0

    def calibrate(self, quant: QuantConfig, program: Any, samples: list[torch.Tensor],
                  **context: Any) -> dict | None:
        from transformers import AutoModelForCausalLM

        from pipeline.llm import outliers, sensitivity

        if not self.uses_calibration(quant):
            return None
        model = AutoModelForCausalLM.from_pretrained(context["model_dir"],
                                                     dtype=torch.float32).eval()
        plan: dict[str, Any] = {}
        if quant.head_outliers:
            plan["head_outliers"] = outliers.find(model, samples, quant.head_outliers)
        if quant.mixed is not None:
            measured = sensitivity.measure(model, samples[: quant.mixed.samples], quant)
            plan.update(sensitivity.plan(measured, quant.mixed))
        return plan

    def save(self, stats: Any, samples: list[torch.Tensor], out: Path) -> dict[str, Any]:
        """The plan as JSON: 8-bit tensors, fp32 head channels, the estimate it was held to."""
        (out / layout.PLAN).write_text(json.dumps(stats, indent=2, sort_keys=True) + "\n")
        layers = stats.get("layers", {})
        return {"plan": layout.PLAN, "estimated_bytes": stats.get("estimated_bytes"),
                "head_outliers": stats.get("head_outliers", []),
                "eight_bit": sorted(n for n, c in layers.items() if c["bits"] == 8)}

    def load(self, folder: Path) -> Any:
        plan = folder / layout.PLAN
        return json.loads(plan.read_text()) if plan.exists() else None

    def quantize(self, quant: QuantConfig, program: Any, params: dict, llm: Any,
                 metadata: dict, stats: Any, grids: dict | None = None) -> Any:
        model = export.eager_from_program(program, params, llm)
        _check_widths(model, quant.group_size)
        with torch.no_grad():
            model = quantize_eager(model, quant, stats, grids)
        log("exporting the quantized model")
        model = export.apply(model, export.runner_transforms(
            llm, kv_cache=export.kv_cache_precision(program)))
        return export.export_program(model, llm, metadata, quant.name)

    @staticmethod
    def _quantize_embedding(model: torch.nn.Module, spec: TensorQuant | None,
                            algorithm: str) -> torch.nn.Module:
        """ExecuTorch's quantized embedding: a lookup kernel on the packed table.

        torchao's weight-only config would leave a dequantize of the whole table on every token,
        outside XNNPACK (measured: most of the decode time); ExecuTorch's handler emits
        `quantized_decomposed.embedding_*`, symmetric per row or per group.
        """
        from executorch.examples.models.llama.source_transformation.quantize import (
            get_quant_embedding_transform,
        )

        if spec is None:
            return model
        return get_quant_embedding_transform(
            f"{spec.bits},{spec.group_size}", quantize_with_hqq=algorithm == "hqq")(model)


def _exception_for(quant: QuantConfig, fqn: str) -> Any:
    return next((e for e in quant.exceptions if re.search(e.match, fqn)), None)


def quantize_eager(model: torch.nn.Module, quant: QuantConfig, plan: Any = None,
                   grids: dict | None = None) -> torch.nn.Module:
    """torchao `quantize_` on the eager model: embedding, head, per-layer exceptions, the rest.

    `plan` (from calibration, for mixed precision) adds exceptions to the config's own; `grids`
    (quant.source_grid=gguf: gguf_grids.load) the source's 4-bit grids, found by weight digest.
    """
    from torchao.quantization import quantize_

    from pipeline.llm import grid, outliers

    if plan and "layers" in plan:
        quant = apply_plan(quant, plan)
    kept = (plan or {}).get("head_outliers")
    head_columns = model.output.weight.detach()[:, kept].clone() if kept else None
    dynamic = quant.activations == "int8_dynamic"
    model = TorchaoWeights._quantize_embedding(model, quant.embedding, quant.algorithm)
    if quant.head is not None:
        head = quant.head
        quantize_(model, _weight_config(head.bits, head.group_size, head.symmetric, dynamic,
                                        quant.algorithm),
                  filter_fn=lambda m, fqn: fqn == "output")

    def body(module: torch.nn.Module, fqn: str) -> bool:
        return isinstance(module, torch.nn.Linear) and fqn != "output"

    for exception in quant.exceptions:
        quantize_(model, _weight_config(exception.bits, exception.group_size, True, dynamic,
                                        quant.algorithm),
                  filter_fn=lambda m, fqn, e=exception: body(m, fqn)
                  and _exception_for(quant, fqn) is e)
    on_grid: list[str] = []
    if quant.source_grid in (*grid.KINDS, GGUF):
        known = grid.known(model, grids or {}) if quant.source_grid == GGUF else {}
        on_grid = grid.split(model, lambda fqn: fqn != "output"
                             and _exception_for(quant, fqn) is None
                             and (quant.source_grid != GGUF or fqn in known),
                             quant.source_grid, known)
        if quant.source_grid == GGUF and not on_grid:
            raise BadInput(f"quant={quant.name} keeps a GGUF's 4-bit grids (Q4_K, Q4_1, Q4_0) "
                           "and no linear of this model is on one; use quant=8da8w or a "
                           "re-quantizing recipe.")
        log(f"{quant.source_grid} grid kept exactly in {len(on_grid)} linears")
        quantize_(model, _weight_config(4, grid.GROUP, True, dynamic, "affine"),
                  filter_fn=lambda m, fqn: fqn.endswith(".main"))
        grid.pin(model)
        quantize_(model, _weight_config(8, 0, True, dynamic, "affine"),
                  filter_fn=lambda m, fqn: fqn.endswith(".corr"))
    if quant.source_grid in ("none", GGUF):  # gguf: the linears without a grid at quant.bits
        quantize_(model, _weight_config(quant.bits, quant.group_size, quant.symmetric, dynamic,
                                        quant.algorithm),
                  filter_fn=lambda m, fqn: body(m, fqn) and _exception_for(quant, fqn) is None
                  and not fqn.endswith((".main", ".corr")))
    if kept:
        model.output = outliers.OutlierHead(model.output, kept, head_columns)
    return model


GGUF = "gguf"  # quant.source_grid: each linear's own grid from the GGUF file (gguf_grids)


def apply_plan(quant: QuantConfig, plan: dict) -> QuantConfig:
    """A mixed-precision plan as config: 8-bit linears become exact-name exceptions."""
    from pipeline.llm.sensitivity import EMBEDDING, HEAD

    layers = plan["layers"]
    exceptions = [LayerException(match=f"^{re.escape(name)}$", bits=8, group_size=0)
                  for name, choice in sorted(layers.items())
                  if choice["bits"] == 8 and name not in (EMBEDDING, HEAD)]

    def family(name: str, current: TensorQuant | None) -> TensorQuant | None:
        if name not in layers:
            return current
        if layers[name]["bits"] == 8:
            return TensorQuant(bits=8, group_size=0, symmetric=True)
        group = quant.embedding.group_size if name == EMBEDDING and quant.embedding else 0
        return TensorQuant(bits=4, group_size=group or quant.group_size,
                           symmetric=name == EMBEDDING or quant.symmetric)

    return dataclasses.replace(quant, exceptions=[*quant.exceptions, *exceptions],
                               embedding=family(EMBEDDING, quant.embedding),
                               head=family(HEAD, quant.head))


SCHEMES = {"none": NoQuantization(), "torchao": TorchaoWeights(), "pt2e": pt2e.Pt2eStatic()}


def scheme(quant: QuantConfig) -> Any:
    return SCHEMES[quant.method]
