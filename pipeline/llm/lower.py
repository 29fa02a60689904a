"""Lower a (quantized) exported program to a `.pte` for one backend, keyed by `backend.name`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pipeline.config import BackendConfig
from pipeline.llm import export
from pipeline.progress import log

PTE = "llm.pte"


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


def to_pte(program: Any, llm: Any, metadata: dict, backend: BackendConfig, name: str) -> bytes:
    """ExecuTorch's LLMEdgeManager: edge lowering for the backend + to_executorch, as export_llm."""
    graph = program.module()
    manager = export.edge_manager(graph, llm, metadata, name)
    manager.pre_autograd_graph_module = graph
    log(f"lowering to {backend.name}")
    LOWERINGS[backend.name](manager, backend)
    log("emitting the ExecuTorch program")
    manager.to_executorch()
    return manager.export_program.buffer


def run(cfg: Any, quantized_dir: Any, model_dir: Any, out: Any) -> dict[str, Any]:
    """The quantized program → `llm.pte`, with the tokenizer files the runner loads beside it."""
    import shutil

    from pipeline.llm.checkpoint import TOKENIZER_FILES

    check_backend_ready(cfg.backend)
    params, metadata = export.load_interface(quantized_dir)
    llm = export.llm_config(cfg.model.executorch)
    program = export.load_program(quantized_dir / export.PROGRAM)
    (out / PTE).write_bytes(to_pte(program, llm, metadata, cfg.backend, "llm"))
    for name in TOKENIZER_FILES:
        if (model_dir / name).exists():
            shutil.copyfile(model_dir / name, out / name)
    return {"pte_bytes": (out / PTE).stat().st_size, "backend": cfg.backend.name}
