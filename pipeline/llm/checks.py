"""The LLM sections' rules: which model, quant, backend and KV-cache settings combine.

The allowed values live here with the rules that use them; `params_file.validate` calls `check` for
`edgerag configure`, `sweep` and every stage, so a bad combination fails before any work in one
sentence. Importing this module does not import torch or ExecuTorch (`llm_config` does, when
called).
"""

from __future__ import annotations

import functools
import importlib.util
import re
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, ValidationError

from pipeline.config import Config, QuantConfig, one_of
from pipeline.errors import BadInput

QUANT_METHODS = ("none", "torchao", "pt2e")
ACTIVATIONS = ("none", "int8_dynamic")
ALGORITHMS = ("affine", "hqq")
SOURCE_GRIDS = ("none", "q4_1", "q4_0", "gguf")
BACKENDS = ("xnnpack", "qnn")
KV_CACHE_PRECISIONS = ("fp32", "bf16", "int8")  # pipeline/llm/kv_cache.py
# Group sizes XNNPACK's blockwise int4 kernels take; 0 means one scale per output channel.
GROUP_SIZES = (0, 32, 64, 128, 256)
# PT2E quantizers and the `quant.pt2e.dtype` values each builds (pipeline/llm/quantizers.py).
PT2E_DTYPES = {
    "xnnpack": ("use_8a8w",),
    "qnn": ("use_16a4w", "use_16a4w_block", "use_8a8w", "use_16a8w"),
}
# The QNN recipes with 4-bit weights: what mixed precision and SeqMSE work on (qnn_tuning.py).
QNN_4BIT_DTYPES = ("use_16a4w", "use_16a4w_block")
# Activation observers a PT2E recipe may name: the quantizer's own, or torchao's MinMaxObserver
# (QnnQuantizer takes one; XNNPACK's symmetric config has its own).
PT2E_OBSERVERS = {"xnnpack": ("default",), "qnn": ("default", "minmax")}
# What a QNN recipe may keep at 16a8w (pipeline/llm/quantizers.py): the attention matmuls
# (ExecuTorch's Llama annotation) and the output head.
KEEP_16A8W = ("attention_matmul", "head")
# ExecuTorch's QnnExecuTorchHtpPerformanceMode, snake_cased.
HTP_PERFORMANCE_MODES = ("default", "sustained_high_performance", "burst", "high_performance",
                         "power_saver", "low_power_saver", "high_power_saver", "low_balanced",
                         "balanced")


def check(cfg: Config, executorch: bool) -> None:
    """Every LLM rule; `executorch=False` leaves `model.executorch` to the stages that read it."""
    one_of("backend.name", cfg.backend.name, BACKENDS)
    _check_quant(cfg.quant, cfg.model.linear_widths)
    _check_grid_source(cfg)
    _check_kv_cache(cfg)
    _check_qnn(cfg)
    if executorch:
        _merged(_llm_config_class(), cfg.model.executorch)


def llm_config(section: Any) -> Any:
    """ExecuTorch's own LlmConfig with our `model.executorch` values merged in: its dataclass
    validates the section, and a bad key or value is one sentence."""
    from executorch.extension.llm.export.config.llm_config import LlmConfig

    return _merged(LlmConfig, section)


# ExecuTorch's LlmConfig module, inside its package.
LLM_CONFIG_FILE = "extension/llm/export/config/llm_config.py"


@functools.cache
def _llm_config_class() -> type:
    """ExecuTorch's LlmConfig from its module loaded by itself, to check a section (`edgerag
    configure`, sweep planning). The module imports only the standard library, but importing it
    by name first runs its package's `__init__`, which imports torchao and dynamo: 3 of
    configure's 4 s. Stages use the real import (`llm_config`), whose classes ExecuTorch's own
    code expects; so does this if ExecuTorch ever moves the file."""
    package = importlib.util.find_spec("executorch")
    locations = package.submodule_search_locations if package else None
    path = Path(locations[0]) / LLM_CONFIG_FILE if locations else None
    if path is None or not path.is_file():
        from executorch.extension.llm.export.config.llm_config import LlmConfig

        return LlmConfig
    spec = importlib.util.spec_from_file_location("edgerag_llm_config_check", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.LlmConfig


def _merged(llm_config_class: type, section: Any) -> Any:
    try:
        merged = OmegaConf.merge(OmegaConf.structured(llm_config_class), section or {})
    except (ConfigKeyError, ValidationError) as error:
        raise BadInput(
            f"model.executorch.{error.full_key} is not valid for ExecuTorch's LlmConfig: "
            f"{str(error.msg).splitlines()[0]}."
        ) from None
    return OmegaConf.to_object(merged)


def allowed_group_sizes(widths: list[int]) -> list[int]:
    return [g for g in GROUP_SIZES if g == 0 or all(w % g == 0 for w in widths)]


def _check_grid_source(cfg: Config) -> None:
    """A grid recipe keeps a GGUF's own 4-bit grid: a float checkpoint has none to keep."""
    source = cfg.model.source
    named = source.file or (source.path if source.kind == "local" else None) or ""
    if cfg.quant.source_grid != "none" and not named.endswith(".gguf"):
        raise BadInput(f"quant={cfg.quant.name} keeps a GGUF's {cfg.quant.source_grid.upper()} "
                       f"grid and model={cfg.model.name} is not a GGUF file; choose a "
                       "re-quantizing recipe such as quant=8da4w_g32.")


def _check_pt2e(quant: QuantConfig, widths: list[int]) -> None:
    if quant.pt2e is None:
        raise BadInput(f"quant={quant.name} uses PT2E but has no quant.pt2e section.")
    one_of("quant.pt2e.quantizer", quant.pt2e.quantizer, tuple(PT2E_DTYPES))
    one_of("quant.pt2e.dtype", quant.pt2e.dtype, PT2E_DTYPES[quant.pt2e.quantizer])
    block = quant.pt2e.block_size
    if quant.pt2e.dtype.endswith("_block") and (block < 1 or any(w % block for w in widths)):
        raise BadInput(
            f"quant.pt2e.block_size={block} does not divide every linear width {tuple(widths)} "
            "of this model; pick a common divisor."
        )
    observers = PT2E_OBSERVERS[quant.pt2e.quantizer]
    if quant.pt2e.act_observer not in observers:
        raise BadInput(f"quant.pt2e.act_observer={quant.pt2e.act_observer!r} is not allowed with "
                       f"quant.pt2e.quantizer={quant.pt2e.quantizer}; choose one of: "
                       f"{', '.join(observers)}.")
    if quant.pt2e.keep_16a8w and quant.pt2e.quantizer != "qnn":
        raise BadInput("quant.pt2e.keep_16a8w is for quant.pt2e.quantizer=qnn only.")
    for name in quant.pt2e.keep_16a8w:
        one_of("quant.pt2e.keep_16a8w[]", name, KEEP_16A8W)
    if not quant.pt2e.logits_margin >= 1.0:
        raise BadInput(
            f"quant.pt2e.logits_margin={quant.pt2e.logits_margin} would narrow the calibrated "
            "range of the logits and clip them; use 1.0 (as observed) or more."
        )
    four_bit_qnn = quant.pt2e.quantizer == "qnn" and quant.pt2e.dtype in QNN_4BIT_DTYPES
    if quant.pt2e.seq_mse_candidates and not four_bit_qnn:
        raise BadInput(f"quant.pt2e.seq_mse_candidates searches 4-bit QNN weight scales; "
                       f"quant={quant.name} has quant.pt2e.dtype={quant.pt2e.dtype}.")
    if not 0 <= quant.pt2e.seq_mse_candidates <= 1000:
        raise BadInput(f"quant.pt2e.seq_mse_candidates={quant.pt2e.seq_mse_candidates} must be "
                       "between 0 (off) and 1000.")
    if quant.mixed is not None and not four_bit_qnn:
        raise BadInput(f"quant.mixed with PT2E chooses 8-bit layers of a 4-bit QNN recipe; "
                       f"quant={quant.name} has quant.pt2e.dtype={quant.pt2e.dtype}.")


def _check_kv_cache(cfg: Config) -> None:
    """The KV cache's precision has one home, `model.kv_cache`; any but fp32 swaps ExecuTorch's
    custom CPU cache and SDPA op, so it needs them."""
    one_of("model.kv_cache", cfg.model.kv_cache, KV_CACHE_PRECISIONS)
    model = (cfg.model.executorch or {}).get("model", {})
    if model.get("quantize_kv_cache"):
        raise BadInput("set the KV cache's precision with model.kv_cache=int8, not "
                       "model.executorch.model.quantize_kv_cache.")
    if cfg.model.kv_cache != "fp32" and (cfg.backend.name != "xnnpack"
                                         or not model.get("use_sdpa_with_kv_cache")):
        raise BadInput(f"model.kv_cache={cfg.model.kv_cache} needs backend=xnnpack and "
                       "model.executorch.model.use_sdpa_with_kv_cache=true (it changes "
                       "ExecuTorch's custom CPU KV cache).")


def _check_qnn(cfg: Config) -> None:
    """QNN graphs differ from XNNPACK's from export on, so quantizer, backend and shapes agree."""
    on_qnn = cfg.backend.name == "qnn"
    qnn_quantizer = cfg.quant.method == "pt2e" and cfg.quant.pt2e.quantizer == "qnn"
    if qnn_quantizer and not on_qnn:
        raise BadInput(f"quant={cfg.quant.name} quantizes for QNN; it needs backend=qnn.")
    if not on_qnn:
        return
    if cfg.quant.method != "none" and not qnn_quantizer:
        raise BadInput(
            f"backend=qnn runs fp16 or QnnQuantizer programs; quant={cfg.quant.name} is neither "
            "(choose quant=fp32 or a quant=qnn_* scheme)."
        )
    one_of("backend.qnn.htp_performance_mode", cfg.backend.qnn.htp_performance_mode,
            HTP_PERFORMANCE_MODES)
    model = (cfg.model.executorch or {}).get("model", {})
    wanted = {"use_kv_cache": True, "use_sdpa_with_kv_cache": False,
              "enable_dynamic_shape": False}
    for key, value in wanted.items():
        if model.get(key) != value:
            raise BadInput(
                f"backend=qnn needs model.executorch.model.{key}={str(value).lower()} "
                "(a static one-token decode graph without ExecuTorch's custom CPU ops)."
            )


def _check_quant(quant: QuantConfig, widths: list[int]) -> None:
    one_of("quant.method", quant.method, QUANT_METHODS)
    if quant.mixed is not None and quant.mixed.budget_mb <= 0:
        raise BadInput(f"quant.mixed.budget_mb={quant.mixed.budget_mb} must be positive.")
    if quant.method == "pt2e":
        _check_pt2e(quant, widths)
    if quant.method != "torchao":
        return
    one_of("quant.activations", quant.activations, ACTIVATIONS)
    one_of("quant.algorithm", quant.algorithm, ALGORITHMS)
    one_of("quant.bits", quant.bits, (4, 8))
    allowed = allowed_group_sizes(widths)
    if quant.group_size not in allowed:
        raise BadInput(
            f"quant.group_size={quant.group_size} does not divide every linear width "
            f"{tuple(widths)} of this model; allowed: {', '.join(map(str, allowed))} "
            "(0 = one scale per channel)."
        )
    for family in ("embedding", "head"):
        tensor = getattr(quant, family)
        if tensor is not None:
            one_of(f"quant.{family}.bits", tensor.bits, (4, 8))
    if quant.embedding is not None and not quant.embedding.symmetric:
        raise BadInput("quant.embedding.symmetric=false is not allowed: ExecuTorch's quantized "
                       "embedding kernels are symmetric.")
    one_of("quant.source_grid", quant.source_grid, SOURCE_GRIDS)
    if not 0 <= quant.head_outliers <= 64:
        raise BadInput(f"quant.head_outliers={quant.head_outliers} must be between 0 and 64.")
    if quant.source_grid in ("q4_1", "q4_0") and (quant.bits, quant.group_size) != (4, 32):
        raise BadInput(f"quant.source_grid={quant.source_grid} keeps 4-bit groups of 32; it needs "
                       "quant.bits=4 and quant.group_size=32.")
    for index, exception in enumerate(quant.exceptions):
        key = f"quant.exceptions[{index}]"
        try:
            re.compile(exception.match)
        except re.error as error:
            raise BadInput(f"{key}.match={exception.match!r} is not a regular expression "
                           f"({error}).") from None
        one_of(f"{key}.bits", exception.bits, (4, 8))
        if exception.group_size not in allowed:
            raise BadInput(f"{key}.group_size={exception.group_size} does not divide every "
                           f"linear width; allowed: {', '.join(map(str, allowed))}.")
