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
from pipeline.llm import export
from pipeline.progress import bar, log


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
                 metadata: dict, stats: Any) -> Any:
        model = export.eager_from_program(program, params, llm)
        _check_widths(model, quant.group_size)
        with torch.no_grad():
            model = quantize_eager(model, quant, stats)
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


def quantize_eager(model: torch.nn.Module, quant: QuantConfig, plan: Any = None
                   ) -> torch.nn.Module:
    """torchao `quantize_` on the eager model: embedding, head, per-layer exceptions, the rest.

    `plan` (from calibration, for mixed precision) adds exceptions to the config's own.
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
    if quant.source_grid in grid.KINDS:
        on_grid = grid.split(model, lambda fqn: fqn != "output"
                             and _exception_for(quant, fqn) is None, quant.source_grid)
        log(f"{quant.source_grid} grid kept exactly in {len(on_grid)} linears")
        quantize_(model, _weight_config(4, grid.GROUP, True, dynamic, "affine"),
                  filter_fn=lambda m, fqn: fqn.endswith(".main"))
        grid.pin(model)
        quantize_(model, _weight_config(8, 0, True, dynamic, "affine"),
                  filter_fn=lambda m, fqn: fqn.endswith(".corr"))
    else:
        quantize_(model, _weight_config(quant.bits, quant.group_size, quant.symmetric, dynamic,
                                        quant.algorithm),
                  filter_fn=lambda m, fqn: body(m, fqn) and _exception_for(quant, fqn) is None)
    if kept:
        model.output = outliers.OutlierHead(model.output, kept, head_columns)
    return model


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


def _takes_one_token(program: Any) -> bool:
    """A static-shape program (QNN's) is the runner's one-token decode step; feed it that way."""
    tokens = next(node for node in program.graph.nodes if node.op == "placeholder"
                  and node.name == program.graph_signature.user_inputs[0])
    return not isinstance(tokens.meta["val"].shape[-1], torch.SymInt)


def _observe_unrecorded_weights(prepared: torch.fx.GraphModule, recorded: set[str]) -> None:
    """Observe constant weights whose observers calibration does not record.

    torchao's affine observers (QNN's per-block one) are not `ObserverBase` and keep min/max
    outside `state_dict`; a weight's statistics come from the weight, so observing it again here
    gives exactly what calibration saw.
    """
    from operator import attrgetter

    for node in _weight_observer_nodes(prepared):
        if node.target not in recorded:
            prepared.get_submodule(node.target)(attrgetter(node.args[0].target)(prepared))


def _weight_observer_nodes(prepared: torch.fx.GraphModule) -> list[torch.fx.Node]:
    return [node for node in prepared.graph.nodes
            if node.op == "call_module" and node.args and node.args[0].op == "get_attr"]


def _freeze_weight_observers(prepared: torch.fx.GraphModule) -> None:
    """After one call, observers of constant weights have seen all they ever will.

    Re-observing every weight on every calibration token dominated QNN calibration (one token per
    call over a 135M model); from here they pass values through with their statistics intact.
    """
    for node in _weight_observer_nodes(prepared):
        prepared.get_submodule(node.target).forward = _identity


def _identity(value: torch.Tensor) -> torch.Tensor:
    return value


# Ops that only move values: their output observers carry the logits' range onward.
_RESHAPES = {"view", "reshape", "permute", "squeeze", "unsqueeze", "transpose", "select",
             "slice", "clone", "_to_copy"}


def logits_observers(prepared: torch.fx.GraphModule) -> list[str]:
    """The observers between the output head and the program's first output (the logits)."""
    output = next(node for node in prepared.graph.nodes if node.op == "output")
    node = output.args[0]
    node = node[0] if isinstance(node, tuple | list) else node
    names = []
    while isinstance(node, torch.fx.Node):
        if node.op == "call_module":
            names.append(node.target)
        elif not (node.op == "call_function"
                  and node.target.__name__.split(".")[0] in _RESHAPES):
            break
        node = node.args[0]
    return names


def widen_logits(prepared: torch.fx.GraphModule, margin: float) -> list[str]:
    """Scale the calibrated min/max of the logits' observers by `margin`; their names.

    Static activation ranges come from the fp32 model on the calibration split. The 4-bit model
    on unseen text produces top logits up to 1.9x beyond that range (SmolLM2-135M, QNN 16a4w
    block-64, 96 held-out tokens), and clipping the top logits flattens exactly the predictions
    that count: perplexity 99.8, against 38.8 with the range doubled. At 16 bits, 3x the range
    still resolves the logits in steps of about 0.003.
    """
    names = logits_observers(prepared)
    seen: set[int] = set()  # observers of shared ranges hold one tensor: scale it once
    for name in names:
        observer = prepared.get_submodule(name)
        for attr in ("min_val", "max_val"):
            value = getattr(observer, attr, None)
            if (isinstance(value, torch.Tensor) and value.numel() and value.data_ptr() not in seen
                    and torch.isfinite(value).all()):
                seen.add(value.data_ptr())
                value.mul_(margin)
    return names


class Pt2eStatic:
    """PT2E: annotate the exported graph, observe real calibration text, convert."""

    def uses_calibration(self, quant: QuantConfig) -> bool:
        return True

    def _quantizer(self, quant: QuantConfig) -> Any:
        from pipeline.llm import quantizers

        return quantizers.build(quant)

    def _prepare(self, quant: QuantConfig, program: Any) -> Any:
        from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e

        return prepare_pt2e(program.module(), self._quantizer(quant))

    def calibrate(self, quant: QuantConfig, program: Any, samples: list[torch.Tensor],
                  **context: Any) -> dict:
        from torchao.quantization.pt2e import ObserverBase

        prepared = self._prepare(quant, program)
        one_token_per_call = _takes_one_token(program)
        with torch.no_grad():
            for index, tokens in enumerate(bar(samples, desc="calibrating", unit="sample")):
                if one_token_per_call:
                    for position, token in enumerate(tokens):
                        prepared(token.view(1, 1), {"input_pos": torch.tensor([position])})
                        if index == position == 0:
                            _freeze_weight_observers(prepared)
                else:
                    prepared(tokens.unsqueeze(0),
                             {"input_pos": torch.tensor([0], dtype=torch.long)})
        return {
            name: module.state_dict()
            for name, module in prepared.named_modules()
            if isinstance(module, ObserverBase)
        }

    def save(self, stats: Any, samples: list[torch.Tensor], out: Path) -> dict[str, Any]:
        """The observers' state dicts, as torch tensors."""
        torch.save(stats, out / layout.OBSERVER_STATS)
        return {"tokens": sum(len(s) for s in samples), "observers": len(stats)}

    def load(self, folder: Path) -> Any:
        stats = folder / layout.OBSERVER_STATS
        return torch.load(stats, weights_only=True) if stats.exists() else None

    def quantize(self, quant: QuantConfig, program: Any, params: dict, llm: Any,
                 metadata: dict, stats: Any) -> Any:
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

        prepared = self._prepare(quant, program)
        observers = dict(prepared.named_modules())
        for name, state in stats.items():
            if name not in observers:
                raise BadInput(f"calibration statistics do not fit this graph (no {name}).")
            observers[name].load_state_dict(state)
        _observe_unrecorded_weights(prepared, set(stats))
        if quant.pt2e.logits_margin != 1.0:
            widened = widen_logits(prepared, quant.pt2e.logits_margin)
            log(f"logits range widened {quant.pt2e.logits_margin}x in {len(widened)} observers")
        converted = convert_pt2e(prepared)
        manager = export.edge_manager(converted, llm, metadata, quant.name)
        manager.pre_autograd_graph_module = converted
        return manager._export(converted)


SCHEMES = {"none": NoQuantization(), "torchao": TorchaoWeights(), "pt2e": Pt2eStatic()}


def scheme(quant: QuantConfig) -> Any:
    return SCHEMES[quant.method]
