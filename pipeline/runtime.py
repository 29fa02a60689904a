"""Run a `.pte` in the ExecuTorch runtime exactly as the phone will: same kernels, same program."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import torch


def data_path(pte: str | Path) -> str | None:
    """The weights file lowered beside a `.pte` (`llm.pte` -> `llm.ptd`), if there is one."""
    ptd = Path(pte).with_suffix(".ptd")
    return str(ptd) if ptd.is_file() else None


def program_bytes(pte: str | Path) -> int:
    """What the phone stores for a program: the `.pte` plus its weights file."""
    ptd = data_path(pte)
    return Path(pte).stat().st_size + (Path(ptd).stat().st_size if ptd else 0)


def text_runner(pte: str | Path, tokenizer: str | Path) -> Any:
    """ExecuTorch's stock TextLLMRunner on a `.pte` (and its `.ptd`), kernels registered."""
    register_llm_kernels()
    from executorch.extension.llm.runner import TextLLMRunner

    return TextLLMRunner(str(pte), str(tokenizer), data_path(pte))


@contextmanager
def native_logs(shown: bool) -> Iterator[None]:
    """Let ExecuTorch's C++ log lines (`[text_prefiller.cpp:121] …`, written to file descriptor
    2) through, or send them to /dev/null: a user asking a question wants the answer."""
    if shown:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def runner_rates(stats: Any) -> dict[str, float]:
    """Prefill and decode tok/s, time to first token and load time from the stock runner's own
    millisecond stamps: the one formula `ask`, the speed evaluation and the bench all report.

    The runner's `generated_tokens` already leaves out the first token (the one prefill
    yields), so it is the count of tokens decoded after the first.
    """
    report = json.loads(stats.to_json_string())
    prefill_ms = report["prompt_eval_end_ms"] - report["inference_start_ms"]
    decode_ms = report["inference_end_ms"] - report["first_token_ms"]
    return {
        "prefill_tok_s": round(report["prompt_tokens"] * 1000.0 / max(prefill_ms, 1), 2),
        "decode_tok_s": round(report["generated_tokens"] * 1000.0 / max(decode_ms, 1), 2),
        "time_to_first_token_ms": report["first_token_ms"] - report["inference_start_ms"],
        "load_s": (report["model_load_end_ms"] - report["model_load_start_ms"]) / 1000.0,
        "prompt_tokens": report["prompt_tokens"],
        "generated_tokens": report["generated_tokens"] + 1,
    }


def bindings() -> ModuleType:
    """ExecuTorch's runtime: the `_C` extension that `portable_lib` re-exports whole and
    `executorch.runtime` wraps, with every kernel library our programs call registered.

    Both wrappers first import ExecuTorch's whole compiler (`executorch.exir`, for one warning
    class): 2.3 s of every process that only runs a `.pte` (`ask`, `build_index`, the
    evaluations, each embedding worker) before its first token or vector.
    """
    register_llm_kernels()
    from executorch.extension.pybindings import _C  # after torch: it links libtorch

    return _C


_KERNEL_LIBRARIES = {"executorch.extension.llm.custom_ops": "*custom_ops_aot_lib.*",
                     "executorch.kernels.quantized": "*quantized_ops_aot_lib.*"}


def register_llm_kernels() -> None:
    """Load the kernel libraries of LLM programs (custom SDPA and KV cache, quantized embeddings
    and linears) that ExecuTorch ships beside `custom_ops.py` and `executorch.kernels.quantized`.

    Those modules load the same files, but `custom_ops.py` first imports the compiler and
    inductor (2.5 s) to register tracing rules that only an export uses; it skips the load when
    the ops are already registered, so an export that imports it after this still works.
    """
    import importlib.util

    for package, pattern in _KERNEL_LIBRARIES.items():
        folder = Path(importlib.util.find_spec(package).submodule_search_locations[0]).resolve()
        [library] = folder.glob(pattern)
        if str(library) not in torch.ops.loaded_libraries:
            torch.ops.load_library(library)


def _method_names(program: Any) -> set[str]:
    return {program.get_method_name(i) for i in range(program.num_methods())}


def _constant(program: Any, name: str) -> Any:
    """A constant metadata method's value (`get_max_seq_len`: an int; `get_eos_ids`: a list)."""
    values = program.load_method(name)([])
    return values[0] if len(values) == 1 else list(values)


def constants(pte: str | Path, names: tuple[str, ...]) -> dict[str, Any]:
    """A program's constant metadata methods (`get_max_seq_len`, `get_eos_ids`, …) that it has,
    read without loading its weights or its `forward`."""
    program = bindings()._load_program(str(pte))
    present = _method_names(program)
    return {name: _constant(program, name) for name in names if name in present}


def context_length(pte: str | Path) -> int | None:
    """The tokens one generation may span: the context length (the runner prefills a prompt
    longer than the max sequence length in calls of that length), else the max sequence."""
    lengths = constants(pte, ("get_max_seq_len", "get_max_context_len"))
    found = lengths.get("get_max_context_len", lengths.get("get_max_seq_len"))
    return int(found) if found is not None else None


class Program:
    """A loaded `.pte`, from its path (with the weights file beside it) or its bytes (held for the
    program's life, as `executorch.runtime` holds them): its `forward` and its constants."""

    def __init__(self, pte: str | Path | bytes):
        runtime = bindings()
        if isinstance(pte, bytes):
            self._bytes = pte
            self._program = runtime._load_program_from_buffer(pte)
        else:
            self._program = runtime._load_program(str(pte), data_path=data_path(pte))
        self._methods = _method_names(self._program)
        self._forward = self._program.load_method("forward")

    def constant(self, name: str) -> Any:
        return _constant(self._program, name) if name in self._methods else None

    def forward(self, *inputs: torch.Tensor) -> list[Any]:
        return self._forward(list(inputs))


def llm_logits(program: Program, tokens: list[int], start_pos: int) -> torch.Tensor:
    """Feed `tokens` at `start_pos` through the KV-cached LLM; return the last position's logits."""
    ids = torch.tensor([tokens], dtype=torch.long)
    pos = torch.tensor([start_pos], dtype=torch.long)
    return program.forward(ids, pos)[0].reshape(-1)
