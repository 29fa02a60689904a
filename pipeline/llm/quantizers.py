"""PT2E quantizers keyed by `quant.pt2e.quantizer`: one small builder per backend (the allowed
values and their checks are `pipeline/llm/checks.py`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pipeline.config import QuantConfig


def _xnnpack(quant: QuantConfig) -> Any:
    """XNNPACK static int8: per-channel symmetric weights, activations observed on real text."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )

    config = get_symmetric_quantization_config(is_per_channel=quant.pt2e.per_channel)
    return XNNPACKQuantizer().set_global(config)


def _qnn(quant: QuantConfig, eight_bit: list[str]) -> Any:
    """QnnQuantizer set up as ExecuTorch's `get_qnn_quantizer` does for Llama, with the choices
    the recipe's YAML makes: per-channel weights, the activation observer (`act_observer`), and
    the ops a 4-bit recipe keeps at 16a8w (`keep_16a8w`: ExecuTorch's
    `custom_annotate_llama_matmul_16a8w` for the attention matmuls, ours for the head), plus the
    linears a mixed-precision plan keeps at 8 bits (`eight_bit`, ExecuTorch names).
    """
    from executorch.backends.qualcomm.quantizer.custom_annotation import (
        custom_annotate_llama_matmul_16a8w,
    )
    from executorch.backends.qualcomm.quantizer.quantizer import QuantDtype
    from torchao.quantization.pt2e import MinMaxObserver

    from pipeline.llm import qnn

    spec = quant.pt2e
    observer = {"default": None, "minmax": MinMaxObserver}[spec.act_observer]
    block_size = spec.block_size if spec.dtype == "use_16a4w_block" else 0
    with qnn.sdk_never_downloaded():
        quantizer = qnn.BlockwiseQnnQuantizer(block_size)
    quantizer.set_default_quant_config(
        getattr(QuantDtype, spec.dtype),
        is_conv_per_channel=spec.per_channel,
        is_linear_per_channel=spec.per_channel,
        act_observer=observer,
    )
    # The output head at 16a8w, as every 4-bit recipe of ExecuTorch's Qualcomm Llama keeps it: on
    # SmolLM2's first 4 layers it cut qnn_16a4w's KL to fp32 from 0.43 to 0.32 per position.
    annotations = {"attention_matmul": custom_annotate_llama_matmul_16a8w,
                   "head": _annotate_16a8w(["output"], observer)}
    chosen = [annotations[n] for n in spec.keep_16a8w]
    if eight_bit:
        chosen.append(_annotate_16a8w(eight_bit, observer))
    if chosen:
        quantizer.add_custom_quant_annotations(tuple(chosen))
    return quantizer


def _annotate_16a8w(linears: list[str], act_observer: Any) -> Callable[[Any], None]:
    """An annotation putting the named linears (their `<name>.conv` after QNN's transforms) at
    16-bit activations and 8-bit per-channel weights, their activations observed as the
    recipe's (`act_observer`; None: ExecuTorch's default, a moving average of each call's range,
    which on SmolLM2 clipped the decoder linears' outliers: qnn_mixed_auto scored 1,211 where
    all-4-bit scored 36.8)."""
    prefixes = tuple(f"{name}." for name in linears)

    def annotate(graph: Any) -> None:
        import torch
        from executorch.backends.qualcomm.quantizer.qconfig import (
            get_ptq_per_channel_quant_config,
        )
        from executorch.backends.qualcomm.quantizer.rules import Q_ANNOTATION_KEY
        from torchao.quantization.pt2e.quantizer import QuantizationAnnotation

        observed = {"act_observer": act_observer} if act_observer is not None else {}
        config = get_ptq_per_channel_quant_config(torch.uint16, weight_dtype=torch.int8,
                                                  **observed)
        for node in graph.graph.nodes:
            if (node.op == "call_function" and node.target == torch.ops.aten.conv2d.default
                    and node.args[1].op == "get_attr"
                    and node.args[1].target.startswith(prefixes)):
                node.meta[Q_ANNOTATION_KEY] = QuantizationAnnotation(
                    input_qspec_map={node.args[0]: config.input_activation,
                                     node.args[1]: config.weight},
                    output_qspec=config.output_activation,
                    _annotated=True,
                )

    return annotate


BUILDERS: dict[str, Callable[[QuantConfig, list[str]], Any]] = {
    "xnnpack": lambda quant, eight_bit: _xnnpack(quant), "qnn": _qnn}


def build(quant: QuantConfig, eight_bit: list[str] | None = None) -> Any:
    """The recipe's quantizer (`eight_bit`: a QNN mixed-precision plan's 8-bit linears);
    `checks` refused a bad `quant.pt2e` when the config was loaded."""
    return BUILDERS[quant.pt2e.quantizer](quant, eight_bit or [])
