"""Qualcomm QNN: quantizing without the SDK, and refusing to lower without it.

ExecuTorch's `setup_qnn_sdk()` downloads a Qualcomm SDK on Linux x86 when `QNN_SDK_ROOT` is unset;
`QnnQuantizer()` reaches it through its op-info lookup, lowering through
`to_edge_transform_and_lower_to_qnn` and the QNN manager. A set-but-empty `QNN_SDK_ROOT` tells it
the caller owns the SDK, so edgerag builds quantizers under that setting and checks for a real
SDK before lowering: nothing here downloads.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from executorch.backends.qualcomm.quantizer.quantizer import QnnQuantizer

from pipeline.config import QnnConfig
from pipeline.errors import BadInput

SDK_ROOT = "QNN_SDK_ROOT"
HOST_LIBRARIES = Path("lib") / "x86_64-linux-clang"
HTP_LIBRARY = "libQnnHtp.so"
# Ops ExecuTorch's QNN llama export keeps on the CPU (partitioner_lib.get_qnn_partitioner).
CPU_OPS = {"llama.fallback.default"}


@contextlib.contextmanager
def sdk_never_downloaded() -> Iterator[None]:
    """Run ExecuTorch's Qualcomm code with `QNN_SDK_ROOT` set (empty if it was unset)."""
    was_unset = SDK_ROOT not in os.environ
    if was_unset:
        os.environ[SDK_ROOT] = ""
    try:
        yield
    finally:
        if was_unset:
            os.environ.pop(SDK_ROOT, None)


def weight_blocks(graph: torch.fx.GraphModule, block_size: int) -> dict[str, tuple[int, ...]]:
    """Node name → block shape: one scale per `block_size` input channels of every linear.

    After QNN's source transforms a linear is a 1x1 conv2d (weight [out, in, 1, 1]).
    """
    shapes = {
        torch.ops.aten.conv2d.default: (1, block_size, 1, 1),
        torch.ops.aten.linear.default: (1, block_size),
    }
    return {node.name: shapes[node.target] for node in graph.graph.nodes
            if node.op == "call_function" and node.target in shapes}


def drop_identity_casts(graph: torch.fx.GraphModule) -> int:
    """Remove `type_as` nodes that cast to the dtype their input already has.

    ExecuTorch's Llama RMSNorm ends in `.type_as(x)` twice; left in the graph they hide the norm
    from QNN's RecomposeRmsNorm, so it stays x*x → mean → add → rsqrt → mul with every step
    quantized per tensor. x*x spans the square of the residual stream's outliers (5e5 after 4
    layers of SmolLM2), so at 16 bits the ordinary tokens' squares round to zero.
    """
    dropped = 0
    for node in list(graph.graph.nodes):
        if node.op != "call_function" or node.target != torch.ops.aten.type_as.default:
            continue
        source, value = node.args[0].meta.get("val"), node.meta.get("val")
        if source is not None and value is not None and source.dtype == value.dtype:
            node.replace_all_uses_with(node.args[0])
            graph.graph.erase_node(node)
            dropped += 1
    if dropped:
        graph.graph.lint()
        graph.recompile()
    return dropped


# ExecuTorch's Qualcomm Llama masks with -255 (masking_utils.PADDING_MASK_VALUE): exp(-255) is 0
# in softmax, and the masked scores share one 16-bit range with the real ones.
MASK_VALUE = -255.0


def bound_masks(graph: torch.fx.GraphModule, value: float = MASK_VALUE) -> int:
    """Replace -inf in constant tensors (the additive causal masks) by `value`, in place.

    QnnQuantizer itself turns -inf into minus the whole quantization range (-65535 at 16 bits),
    which makes the scores + mask add span 65535 and quantizes attention scores in steps of 1.0
    before softmax.
    """
    from operator import attrgetter

    bounded = 0
    for node in graph.graph.nodes:
        if node.op != "get_attr":
            continue
        tensor = attrgetter(node.target)(graph)
        if torch.is_tensor(tensor) and tensor.is_floating_point() and torch.isinf(tensor).any():
            with torch.no_grad():
                tensor.clamp_(min=value)
            bounded += 1
    return bounded


class BlockwiseQnnQuantizer(QnnQuantizer):
    """QnnQuantizer for ExecuTorch's Llama graph.

    Before QNN's own annotation passes it drops the no-op casts that keep RMSNorm from being
    recomposed into one `rms_norm` op and bounds the causal masks (see above). It also finds the
    linears to block-quantize (block_size > 0): `set_block_size_map` takes node names, which
    exist only once the graph does; ExecuTorch's Llama scripts compute them from the graph before
    `prepare_pt2e`, here it happens inside it.
    """

    def __init__(self, block_size: int = 0) -> None:
        super().__init__()
        self.block_size = block_size

    def transform_for_annotation(self, model: torch.fx.GraphModule) -> torch.fx.GraphModule:
        drop_identity_casts(model)
        bound_masks(model)
        return super().transform_for_annotation(model)

    def annotate(self, model: torch.fx.GraphModule) -> torch.fx.GraphModule:
        if self.block_size:
            self.set_block_size_map(weight_blocks(model, self.block_size))
        return super().annotate(model)


def check_sdk() -> None:
    """Raise BadInput, before any work, unless a Qualcomm SDK the QNN manager can load is set up."""
    root = os.environ.get(SDK_ROOT, "")
    install = "install the Qualcomm AI Engine Direct SDK (QAIRT) and set QNN_SDK_ROOT to it"
    if not root:
        raise BadInput(f"backend=qnn needs QNN_SDK_ROOT, which is unset or empty: {install}.")
    libraries = Path(root) / HOST_LIBRARIES
    if not (libraries / HTP_LIBRARY).is_file():
        raise BadInput(f"QNN_SDK_ROOT={root} has no {HOST_LIBRARIES / HTP_LIBRARY}: {install}.")
    search_path = [Path(p) for p in os.environ.get("LD_LIBRARY_PATH", "").split(":") if p]
    if libraries.resolve() not in {p.resolve() for p in search_path}:
        raise BadInput(
            f"QNN_SDK_ROOT={root} is set but LD_LIBRARY_PATH lacks {libraries}, where the QNN "
            "manager loads libQnnHtp.so from; add it before starting edgerag."
        )


def chipset(soc_model: str) -> Any:
    from executorch.backends.qualcomm.utils.utils import get_soc_to_chipset_map

    chipsets = get_soc_to_chipset_map()
    if soc_model not in chipsets:
        raise BadInput(
            f"backend.qnn.soc_model={soc_model!r} is not allowed; choose one of: "
            f"{', '.join(chipsets)}."
        )
    return chipsets[soc_model]


def compiler_specs(qnn: QnnConfig, quantized: bool) -> list[Any]:
    """HTP compiler specs: quantized programs run as integers, fp32 ones as fp16 on the HTP."""
    from executorch.backends.qualcomm.serialization.qc_schema import (
        QnnExecuTorchHtpPerformanceMode,
    )
    from executorch.backends.qualcomm.utils.utils import (
        generate_htp_compiler_spec,
        generate_qnn_executorch_compiler_spec,
    )

    # checks.HTP_PERFORMANCE_MODES are the enum's names snake_cased: burst → kHtpBurst.
    camel = "".join(word.capitalize() for word in qnn.htp_performance_mode.split("_"))
    mode = getattr(QnnExecuTorchHtpPerformanceMode, f"kHtp{camel}")
    return generate_qnn_executorch_compiler_spec(
        soc_model=chipset(qnn.soc_model),
        backend_options=generate_htp_compiler_spec(
            use_fp16=not quantized, htp_performance_mode=mode
        ),
        shared_buffer=qnn.shared_buffer,
    )


def is_quantized(graph: torch.fx.GraphModule) -> bool:
    return any(
        node.op == "call_function" and "dequantize" in str(node.target)
        for node in graph.graph.nodes
    )


def to_edge(graph: torch.fx.GraphModule, example_inputs: tuple, metadata: dict,
            qnn: QnnConfig) -> Any:
    """ExecuTorch's QNN entry point: QNN's export and edge passes, then `QnnPartitioner`.

    The generic `to_edge_transform_and_lower` + `QnnPartitioner` skips the passes that carry
    quantization parameters to the HTP (AnnotateQuantAttrs, FoldQDQ, …), so QNN uses its own.
    """
    from executorch.backends.qualcomm.utils.utils import to_edge_transform_and_lower_to_qnn

    check_sdk()
    return to_edge_transform_and_lower_to_qnn(
        graph,
        example_inputs,
        compiler_specs(qnn, quantized=is_quantized(graph)),
        constant_methods=metadata,
        skip_node_op_set=CPU_OPS,
        skip_mutable_buffer=True,
    )
