"""PT2E quantizers keyed by `quant.pt2e.quantizer`: one small builder per backend."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pipeline.config import QuantConfig
from pipeline.errors import BadInput


def _xnnpack(quant: QuantConfig) -> Any:
    """XNNPACK static int8: per-channel symmetric weights, activations observed on real text."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )

    config = get_symmetric_quantization_config(is_per_channel=quant.pt2e.per_channel)
    return XNNPACKQuantizer().set_global(config)


BUILDERS: dict[str, Callable[[QuantConfig], Any]] = {"xnnpack": _xnnpack}


def build(quant: QuantConfig) -> Any:
    if quant.pt2e is None:
        raise BadInput(f"quant={quant.name} uses PT2E but has no quant.pt2e section.")
    builder = BUILDERS.get(quant.pt2e.quantizer)
    if builder is None:
        raise BadInput(
            f"quant.pt2e.quantizer={quant.pt2e.quantizer!r} is not allowed; "
            f"choose one of: {', '.join(BUILDERS)}."
        )
    return builder(quant)
