"""Lower a (quantized) exported program to a `.pte` for one backend, keyed by `backend.name`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pipeline import layout
from pipeline.config import BackendConfig
from pipeline.llm import checks, export
from pipeline.progress import log


def _xnnpack_partitioners(backend: BackendConfig) -> list[Any]:
    """Dynamically-quantized linears first, then every other op XNNPACK takes (export_llm order)."""
    from executorch.extension.llm.export.partitioner_lib import get_xnnpack_partitioner

    partitioners = [get_xnnpack_partitioner(dynamic_quant_only_partitioner=True)]
    if backend.xnnpack.extended_ops:
        partitioners.append(get_xnnpack_partitioner(dynamic_quant_only_partitioner=False))
    return partitioners


def _xnnpack(manager: Any, backend: BackendConfig) -> None:
    manager.to_edge_transform_and_lower(_xnnpack_partitioners(backend))


def _qnn(manager: Any, backend: BackendConfig) -> None:
    """QNN lowers through its own entry point (its passes, then QnnPartitioner); see llm/qnn.py."""
    from pipeline.llm import qnn

    manager.edge_manager = qnn.to_edge(manager.pre_autograd_graph_module,
                                       manager.example_inputs, manager.metadata, backend.qnn)


LOWERINGS: dict[str, Callable[[Any, BackendConfig], None]] = {"xnnpack": _xnnpack, "qnn": _qnn}


def check_backend_ready(backend: BackendConfig) -> None:
    """Fail before any work when the backend's toolchain is missing (QNN: the Qualcomm SDK)."""
    if backend.name == "qnn":
        from pipeline.llm import qnn

        qnn.check_sdk()
        qnn.chipset(backend.qnn.soc_model)


WEIGHTS = layout.LLM_PTD.removesuffix(".ptd")  # ExecuTorch adds the suffix to the tag


def _weights_tag(backend: BackendConfig) -> Callable[[Any], str] | None:
    """Constants (delegated or not) tagged for llm.ptd; None keeps them inside the .pte."""
    if backend.name == "xnnpack" and backend.xnnpack.weights_file:
        return lambda node: WEIGHTS
    return None


def lower(program: Any, llm: Any, metadata: dict, backend: BackendConfig, name: str) -> Any:
    """ExecuTorch's LLMEdgeManager: edge lowering for the backend + to_executorch, as export_llm.

    With a weights file, every constant goes through one named-data store, which keeps identical
    tensors once: the 8-bit embedding table and the output head quantize to the same bytes.
    """
    graph = program.module()
    tag = _weights_tag(backend)
    if tag is not None:
        from executorch.exir.passes.external_constants_pass import (
            delegate_external_constants_pass_unlifted,
        )

        delegate_external_constants_pass_unlifted(module=graph, gen_tag_fn=tag)
    manager = export.edge_manager(graph, llm, metadata, name)
    manager.pre_autograd_graph_module = graph
    # export_llm's canonical pass: the attention's transpose pairs around the custom SDPA and KV
    # cache ops cancel. Without it XNNPACK runs 6 transposes per layer (about a quarter of decode).
    manager.run_canonical_optimizations()
    log(f"lowering to {backend.name}")
    LOWERINGS[backend.name](manager, backend)
    log("emitting the ExecuTorch program")
    manager.to_executorch(external_constants_tag=tag)
    return manager.export_program


def to_pte(program: Any, llm: Any, metadata: dict, backend: BackendConfig, name: str) -> bytes:
    """A self-contained `.pte` (weights inside), whatever the backend's weights_file says."""
    import dataclasses

    inline = dataclasses.replace(backend, xnnpack=dataclasses.replace(backend.xnnpack,
                                                                      weights_file=False))
    return lower(program, llm, metadata, inline, name).buffer


def run(cfg: Any, quantized_dir: Any, model_dir: Any, out: Any) -> dict[str, Any]:
    """The quantized program → `llm.pte`, with the tokenizer files the runner loads beside it."""
    import shutil

    from pipeline.llm.checkpoint import TOKENIZER_FILES

    check_backend_ready(cfg.backend)
    params, metadata = export.load_interface(quantized_dir)
    llm = checks.llm_config(cfg.model.executorch)
    program = export.load_program(quantized_dir / layout.PROGRAM)
    lowered = lower(program, llm, metadata, cfg.backend, "llm")
    (out / layout.LLM_PTE).write_bytes(lowered.buffer)
    if _weights_tag(cfg.backend) is not None:
        lowered.write_tensor_data_to_file(str(out))
    for name in TOKENIZER_FILES:
        if (model_dir / name).exists():
            shutil.copyfile(model_dir / name, out / name)
    files = sorted(p.name for p in out.iterdir() if p.suffix in (".pte", ".ptd"))
    return {"pte_bytes": sum((out / f).stat().st_size for f in files), "program_files": files,
            "backend": cfg.backend.name}
