"""Build ExecuTorch's Llama from a normalized checkpoint and export it with the runner's interface.

The stock LLM runner expects: tokens [1, T] and input_pos [1] in, last-position logits out, a KV
cache inside the program, ExecuTorch's custom SDPA op, and constant methods (`get_bos_id`,
`get_eos_ids`, `get_max_seq_len`, …). All of that comes from ExecuTorch's own building blocks
(`construct_transformer`, its source transforms, `LLMEdgeManager`), configured by the
`model.executorch` section, which is a slice of ExecuTorch's `LlmConfig`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from pipeline import layout
from pipeline.errors import BadInput
from pipeline.llm import checks

_ADDRESS = re.compile(r" at 0x[0-9a-f]+>")


def register_runtime_ops() -> None:
    """Custom ops the exported graphs use must be registered before loading or running them."""
    from executorch.extension.llm.custom_ops import custom_ops  # noqa: F401
    from executorch.kernels import quantized  # noqa: F401


def build_eager(params: dict[str, Any], llm: Any, state_dict: dict[str, torch.Tensor]) -> Any:
    """ExecuTorch's Llama Transformer with the given weights (fp32, KV cache, eval mode)."""
    from executorch.examples.models.llama.llama_transformer import construct_transformer
    from executorch.examples.models.llama.model_args import ModelArgs

    args = ModelArgs(
        max_seq_len=llm.export.max_seq_length,
        max_context_len=llm.export.max_context_length,
        max_batch_size=1,
        use_kv_cache=llm.model.use_kv_cache,
        use_sdpa_with_kv_cache_op=llm.model.use_sdpa_with_kv_cache,
        enable_dynamic_shape=llm.model.enable_dynamic_shape,
        generate_full_logits=False,
        **params,
    )
    # Built on the CPU, not on "meta": buffers absent from checkpoints (KV cache, rope tables)
    # must be real tensors.
    torch.manual_seed(0)
    from pipeline.llm import unbuilt

    model = unbuilt.complete(construct_transformer(args), args)
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    missing_weights = [name for name in missing if name.endswith(".weight")]
    if missing_weights or unexpected:
        raise BadInput(
            f"the checkpoint does not fit the model: {(missing_weights or unexpected)[0]}."
        )
    return model.eval()


def runner_transforms(llm: Any, backend: str = "xnnpack", kv_cache: str = "fp32"
                      ) -> list[Callable[[torch.nn.Module], torch.nn.Module]]:
    """Source transforms that shape KV cache and attention for the backend (no quantization).

    XNNPACK: ExecuTorch's fused custom SDPA + KV-cache ops, which the CPU runner expects, with the
    cache in `kv_cache` precision (`pipeline/llm/kv_cache.py`).
    QNN: the HTP cannot run those custom ops, so plain attention with an index_put KV cache, an
    additive causal mask and linears as 1x1 convs (export_llama_lib's transforms for qnn).
    """
    if backend == "qnn":
        return _qnn_transforms(llm)
    from executorch.examples.models.llama.source_transformation.custom_kv_cache import (
        replace_kv_cache_with_custom_kv_cache,
    )
    from executorch.examples.models.llama.source_transformation.sdpa import (
        replace_sdpa_with_custom_op,
    )

    from pipeline.llm import kv_cache as precision

    if not (llm.model.use_kv_cache and llm.model.use_sdpa_with_kv_cache):
        return []
    return [replace_sdpa_with_custom_op, replace_kv_cache_with_custom_kv_cache,
            *precision.transforms(kv_cache)]


def kv_cache_precision(program: Any) -> str:
    """The KV-cache precision an exported program was built with, read from its cache buffers."""
    names = {torch.bfloat16: "bf16", torch.int8: "int8"}
    dtypes = {value.dtype for name, value in program.state_dict.items()
              if name.endswith(("k_cache", "v_cache"))}
    return next((names[d] for d in dtypes if d in names), "fp32")


def _qnn_transforms(llm: Any) -> list[Callable[[torch.nn.Module], torch.nn.Module]]:
    from executorch.backends.qualcomm.utils.utils import convert_linear_to_conv2d
    from executorch.examples.models.llama.source_transformation.sdpa import (
        replace_causal_mask,
        replace_kv_cache_with_simple_kv_cache,
        replace_sdpa_with_flex_sdpa,
    )

    if not llm.model.use_kv_cache:
        return []
    return [replace_kv_cache_with_simple_kv_cache, replace_sdpa_with_flex_sdpa,
            replace_causal_mask, convert_linear_to_conv2d]


def runner_metadata(params: dict[str, Any], llm: Any, bos_id: int, eos_ids: list[int]) -> dict:
    """Constant methods the stock runner reads from the .pte."""
    from executorch.examples.models.llama.export_llama_lib import _load_llama_model_metadata

    metadata = _load_llama_model_metadata(
        llm.model.use_kv_cache,
        llm.model.use_sdpa_with_kv_cache,
        llm.model.enable_dynamic_shape,
        llm.export.max_seq_length,
        llm.export.max_context_length,
        params["n_layers"],
        params["vocab_size"],
    )
    metadata.update({"get_bos_id": bos_id, "get_eos_ids": eos_ids})
    if llm.export.max_seq_length < llm.export.max_context_length:
        # The runner prefills a longer prompt in calls of get_max_seq_len tokens, but
        # LLMEdgeManager exports the token dimension up to max_seq_length - 1: say that.
        metadata["get_max_seq_len"] = llm.export.max_seq_length - 1
    return metadata


def edge_manager(model: torch.nn.Module, llm: Any, metadata: dict, name: str) -> Any:
    """ExecuTorch's LLMEdgeManager set up with the runner's example inputs and dynamic shapes."""
    from executorch.extension.llm.export.builder import DType, LLMEdgeManager

    dynamic = llm.model.enable_dynamic_shape
    tokens = torch.tensor([[1, 2, 3]] if dynamic else [[1]], dtype=torch.long)
    manager = LLMEdgeManager(
        model=model,
        modelname=name,
        max_seq_len=llm.export.max_seq_length,
        use_kv_cache=llm.model.use_kv_cache,
        example_inputs=(tokens, {"input_pos": torch.tensor([0], dtype=torch.long)}),
        dtype=DType.fp32,
        enable_dynamic_shape=dynamic,
        metadata=dict(metadata),
    )
    # LLMEdgeManager sets get_max_seq_len to max_seq_length itself; ours may say one less.
    manager.metadata["get_max_seq_len"] = metadata["get_max_seq_len"]
    return manager


def export_program(model: torch.nn.Module, llm: Any, metadata: dict, name: str) -> Any:
    """torch.export the model exactly as ExecuTorch's export_llm does (strict, MATH SDPA)."""
    return edge_manager(model, llm, metadata, name)._export()


def save_interface(out: Path, params: dict, metadata: dict) -> None:
    (out / layout.INTERFACE).write_text(json.dumps(params, indent=2, sort_keys=True) + "\n")
    (out / layout.METADATA).write_text(json.dumps(metadata, indent=2, sort_keys=True) + "\n")


def load_interface(folder: Path) -> tuple[dict, dict]:
    return (json.loads((folder / layout.INTERFACE).read_text()),
            json.loads((folder / layout.METADATA).read_text()))


def save_program(program: Any, path: Path) -> None:
    """torch.export.save, minus the node metadata that differs between two builds of the same
    graph: stack traces (absolute paths of this checkout and venv), the graph ids in `from_node`
    provenance and the `nn_module_stack` keys (Python id()s of graphs and modules). Stack traces
    only serve debugging and go; ids become stable ordinals. The archive's bytes then depend on
    the graph and weights alone, so a rebuild of the same model gives the same DVC hash and
    nothing downstream re-runs, and the lowered `.pte` is what it was before."""
    ordinals: dict[int, int] = {}
    for module in program.graph_module.modules():
        if not isinstance(module, torch.fx.GraphModule):
            continue
        for node in module.graph.nodes:
            node.meta.pop("stack_trace", None)
            for source in node.meta.get("from_node") or []:
                _stable_graph_ids(source, ordinals)
            stack = node.meta.get("nn_module_stack")
            if stack:
                node.meta["nn_module_stack"] = {
                    f"{index}:{path}": (path, kind)
                    for index, (path, kind) in enumerate(stack.values())}
    torch.export.save(program, str(path))


def _stable_graph_ids(source: Any, ordinals: dict[int, int]) -> None:
    """Replace each provenance record's graph id (a Python id()) by its order of appearance.

    ExecuTorch derives debug handles from (ancestor name, graph id) and only needs the ids to be
    distinct, so the `.pte` is unchanged while the archive no longer depends on addresses (nor
    do targets, which may print a function's address).
    """
    info = getattr(source, "node_info", None)
    if info is not None:
        info.graph_id = ordinals.setdefault(info.graph_id, len(ordinals))
        info.target = _ADDRESS.sub(">", info.target)  # "<function f at 0x7f…>"
        source._dict = None  # NodeSource caches its dict form
    for parent in getattr(source, "from_node", []) or []:
        _stable_graph_ids(parent, ordinals)


def load_program(path: Path) -> Any:
    register_runtime_ops()
    return torch.export.load(str(path))


def eager_from_program(program: Any, params: dict, llm: Any) -> torch.nn.Module:
    """Rebuild the eager model from an exported fp32 program's weights (for torchao schemes)."""
    state = {k: v for k, v in program.state_dict.items() if "kv_cache" not in k}
    return build_eager(params, llm, state)


def apply(model: torch.nn.Module, transforms: list[Callable]) -> torch.nn.Module:
    for transform in transforms:
        model = transform(model)
    return model


def run(model_dir: Path, model_cfg: Any, out: Path, backend: str = "xnnpack") -> dict[str, Any]:
    """fetch_model's folder → fp32 program with the runner's interface, saved in `out`."""
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoTokenizer

    from pipeline.llm import families
    from pipeline.progress import log

    hf_config = AutoConfig.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    params = families.model_args(hf_config)
    llm = checks.llm_config(model_cfg.executorch)
    if params.get("sliding_window") and (backend != "xnnpack" or model_cfg.kv_cache != "fp32"):
        raise BadInput(f"a model with sliding-window layers builds for XNNPACK with an fp32 KV "
                       f"cache only (ExecuTorch's ring cache), not {backend} with "
                       f"model.kv_cache={model_cfg.kv_cache}.")
    log(f"building ExecuTorch's Llama from the {hf_config.model_type} checkpoint")
    # The checkpoint's tensors are copied into the model and dropped here, not held through
    # torch.export: that was 0.5 GB of the stage's peak for SmolLM2-135M.
    model = apply(build_eager(params, llm, families.to_meta(
        hf_config, load_file(model_dir / "model.safetensors"))),
        runner_transforms(llm, backend, model_cfg.kv_cache))
    eos_ids = sorted({tokenizer.eos_token_id, *_as_list(hf_config.eos_token_id)} - {None})
    metadata = runner_metadata(params, llm, _bos_id(tokenizer, hf_config, eos_ids), eos_ids)
    log("torch.export (strict, KV cache, dynamic prompt length)")
    program = export_program(model, llm, metadata, model_cfg.name)
    save_program(program, out / layout.PROGRAM)
    save_interface(out, params, metadata)
    return {"parameters": sum(p.numel() for p in model.parameters()), "metadata": metadata}


def _bos_id(tokenizer: Any, hf_config: Any, eos_ids: list[int]) -> int:
    """Qwen's tokenizers have no BOS token; the runner's `get_bos_id` then takes the model
    config's (Qwen's `<|endoftext|>`), as ExecuTorch's Qwen examples do, else the first EOS."""
    for candidate in (tokenizer.bos_token_id, hf_config.bos_token_id, *eos_ids):
        if candidate is not None:
            return candidate
    raise BadInput("the tokenizer and the model config name neither a BOS nor an EOS token.")


def _as_list(value: Any) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]
