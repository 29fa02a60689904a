"""Making QNN's 4-bit weights cost less, measured on the calibration split only.

Both work on the QnnQuantizer-prepared graph with ExecuTorch's own QNN weight observers and
fake-quantizer (`SeqMseModule`), so the grids measured here are the grids the HTP gets.

Mixed precision (`quant.mixed` on a 4-bit QNN recipe): each decoder linear is put alone on its
4-bit grid in the fp32 model; the KL divergence of the next-token distributions from fp32's is
its sensitivity, and the most sensitive are kept at 16a8w (8-bit weights per channel) while the
estimated bytes of the linears stay within `budget_mb` (`sensitivity.plan`).

SeqMSE (`quant.pt2e.seq_mse_candidates`): ExecuTorch's Qualcomm search for the factor in (0, 1] of
each weight's observed scale that minimises its layer's output error. ExecuTorch runs it on one
multi-token batch; edgerag's QNN graph takes one token per call, so each layer's inputs and
outputs are gathered over the first calibration sample's tokens and searched once on them all.
"""

from __future__ import annotations

import copy
import types
from collections.abc import Callable
from typing import Any

import torch

WEIGHT_SUFFIX = ".conv.weight"  # QNN's source transforms turn each linear into a 1x1 conv


def linear_weights(prepared: torch.fx.GraphModule) -> dict[str, tuple[torch.fx.Node, str]]:
    """ExecuTorch linear name (`layers.0.attention.wq`) -> (its conv node, its weight observer)."""
    found = {}
    for node in prepared.graph.nodes:
        if node.op == "call_function" and node.target == torch.ops.aten.conv2d.default:
            observer = node.args[1]
            if (observer.op == "call_module" and observer.args[0].op == "get_attr"
                    and observer.args[0].target.endswith(WEIGHT_SUFFIX)):
                found[observer.args[0].target.removesuffix(WEIGHT_SUFFIX)] = (node, observer.target)
    return found


def _bits(observer: Any) -> int:
    return (int(observer.quant_max) - int(observer.quant_min)).bit_length()


def _block(observer: Any) -> int:
    block = getattr(observer, "block_size", None)
    return int(block[1]) if block is not None else 0


def four_bit_linears(prepared: torch.fx.GraphModule) -> set[str]:
    """The linears the recipe puts on a 4-bit grid: mixed precision's candidates."""
    return {name for name, (_, observer) in linear_weights(prepared).items()
            if _bits(prepared.get_submodule(observer)) <= 4}


def tensor_bytes(shape: tuple[int, int], bits: int, block: int) -> int:
    """Estimated HTP bytes of a weight: codes, an fp32 scale per channel, and with blocks (LPBQ)
    a 4-bit scale per block."""
    rows, cols = shape
    block_scales = rows * (cols // block) // 2 if block else 0
    return rows * cols * bits // 8 + rows * 4 + block_scales


def grid(prepared: torch.fx.GraphModule) -> Callable[[str, torch.Tensor], tuple]:
    """`sensitivity.measure_grids`' grid: a linear's weight through a fresh copy of its QNN
    observer and ExecuTorch's fake-quantizer for that observer."""
    from executorch.backends.qualcomm._passes.seq_mse import SeqMseModule

    found = linear_weights(prepared)

    def quantize(name: str, weight: torch.Tensor) -> tuple[torch.Tensor, int]:
        node, observer_name = found[name]
        observer = copy.deepcopy(prepared.get_submodule(observer_name))
        as_conv = weight[:, :, None, None]
        observer(as_conv)
        scale, zero_point = observer.calculate_qparams()
        module = SeqMseModule(as_conv, None, node, observer, num_candidates=1)
        return module._fake_quant(scale, zero_point.to(torch.int32))[:, :, 0, 0], _block(observer)

    return quantize


class SeqMseSearch:
    """ExecuTorch's SeqMSE modules inserted after every conv, recording instead of searching
    while the first calibration sample passes one token at a time; `finish` searches each layer
    on everything it recorded, removes the modules and returns the weight -> scale factor."""

    def __init__(self, prepared: torch.fx.GraphModule, candidates: int) -> None:
        from executorch.backends.qualcomm._passes.seq_mse import InsertSeqMse, SeqMseModule

        self.prepared = InsertSeqMse(candidates)(prepared).graph_module
        self.searches: dict[str, Any] = {}
        self.recorded: dict[str, tuple[list, list]] = {}
        for node in self.prepared.graph.nodes:
            module = (self.prepared.get_submodule(node.target) if node.op == "call_module"
                      else None)
            if isinstance(module, SeqMseModule):
                weight = node.args[1].args[1].args[0].target  # conv -> observer -> get_attr
                self.searches[weight] = module
                self.recorded[weight] = inputs, outputs = [], []
                module.forward = types.MethodType(_recorder(inputs, outputs), module)

    def finish(self) -> dict[str, float]:
        from executorch.backends.qualcomm._passes.seq_mse import RemoveSeqMse, SeqMseModule

        from pipeline.progress import bar

        steps = {}
        for weight, module in bar(sorted(self.searches.items()), desc="SeqMSE", unit="layer"):
            inputs, outputs = self.recorded.pop(weight)
            SeqMseModule.forward(module, torch.cat(inputs), torch.cat(outputs))
            steps[weight] = float(module.best_candidate_step)
        RemoveSeqMse()(self.prepared)
        return steps


def _recorder(inputs: list, outputs: list) -> Callable:
    def record(self: Any, nominal_input: torch.Tensor, nominal_output: torch.Tensor) -> None:
        inputs.append(nominal_input.detach().clone())
        outputs.append(nominal_output.detach().clone())
    return record


def apply_steps(prepared: torch.fx.GraphModule, steps: dict[str, float]) -> int:
    """Scale each searched weight's observed scale by its factor, as ExecuTorch's RemoveSeqMse
    does, in a graph whose observers hold their calibrated state; how many were scaled."""
    scaled = 0
    for node in prepared.graph.nodes:
        if node.op != "call_module" or not node.args or node.args[0].op != "get_attr":
            continue
        step = steps.get(node.args[0].target)
        if step is None:
            continue
        observer = prepared.get_submodule(node.target)
        scale, zero_point = observer.calculate_qparams()
        encoding = (scale * step, zero_point)
        observer.calculate_qparams = types.MethodType(lambda self, e=encoding: e, observer)
        scaled += 1
    return scaled
