"""Run a `.pte` in the ExecuTorch runtime exactly as the phone will: same kernels, same program."""

from __future__ import annotations

from pathlib import Path
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


def register_llm_kernels() -> None:
    """LLM programs use ExecuTorch's custom SDPA/KV-cache and quantized kernels; load them first."""
    from executorch.extension.llm.custom_ops import custom_ops  # noqa: F401
    from executorch.kernels import quantized  # noqa: F401


class Program:
    """A loaded `.pte`: its `forward` method and its constant metadata methods."""

    def __init__(self, path: str | Path):
        from executorch.runtime import Runtime

        register_llm_kernels()
        self.path = Path(path)
        self._program = Runtime.get().load_program(str(path), data_path=data_path(path))
        self._forward = self._program.load_method("forward")

    def constant(self, name: str) -> Any:
        if name not in self._program.method_names:
            return None
        values = self._program.load_method(name).execute([])
        return values[0] if len(values) == 1 else list(values)

    def forward(self, *inputs: torch.Tensor) -> list[Any]:
        return self._forward.execute(list(inputs))


def llm_logits(program: Program, tokens: list[int], start_pos: int) -> torch.Tensor:
    """Feed `tokens` at `start_pos` through the KV-cached LLM; return the last position's logits."""
    ids = torch.tensor([tokens], dtype=torch.long)
    pos = torch.tensor([start_pos], dtype=torch.long)
    return program.forward(ids, pos)[0].reshape(-1)
