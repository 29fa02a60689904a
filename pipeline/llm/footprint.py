"""What a quantized program's weights will occupy on the device, estimated from the program.

Without the QNN SDK there is no context binary to measure, so the QNN recipes are compared by
this estimate: every constant the program holds (not the KV caches it mutates), quantized ones at
the bit width their dequantize node declares (a 4-bit weight is stored in int8 here, packed on the
device), everything else (scales, norms, masks) at its own element size.
"""

from __future__ import annotations

import math
from typing import Any

import torch


def _arguments(node: torch.fx.Node) -> dict[str, Any]:
    names = [argument.name for argument in node.target._schema.arguments]
    return {**dict(zip(names, node.args, strict=False)), **node.kwargs}


def _declared_bits(program: Any) -> dict[str, int]:
    """Placeholder name -> bits, for every constant a dequantize node reads as its input."""
    bits = {}
    for node in program.graph.nodes:
        if node.op != "call_function" or "dequantize" not in str(node.target):
            continue
        if not hasattr(node.target, "_schema"):
            continue
        arguments = _arguments(node)
        source = node.args[0]
        if (isinstance(source, torch.fx.Node) and source.op == "placeholder"
                and "quant_min" in arguments and "quant_max" in arguments):
            levels = int(arguments["quant_max"]) - int(arguments["quant_min"]) + 1
            bits[source.name] = max(1, math.ceil(math.log2(levels)))
    return bits


def weight_bytes(program: Any) -> int:
    """Estimated bytes of the program's constants (see the module docstring)."""
    signature = program.graph_signature
    mutated = set(signature.buffers_to_mutate.values())
    named = {**signature.inputs_to_parameters, **signature.inputs_to_buffers,
             **signature.inputs_to_lifted_tensor_constants}
    bits = _declared_bits(program)
    total = 0
    for placeholder, name in named.items():
        if name in mutated:
            continue
        tensor = program.state_dict.get(name, program.constants.get(name))
        if not torch.is_tensor(tensor):
            continue
        if placeholder in bits:
            total += math.ceil(tensor.numel() * bits[placeholder] / 8)
        else:
            total += tensor.numel() * tensor.element_size()
    return total
