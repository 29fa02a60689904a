"""Run a `.pte` in the ExecuTorch runtime exactly as the phone will: same kernels, same program."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
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


def register_llm_kernels() -> None:
    """LLM programs use ExecuTorch's custom SDPA/KV-cache and quantized kernels; load them first."""
    from executorch.extension.llm.custom_ops import custom_ops  # noqa: F401
    from executorch.kernels import quantized  # noqa: F401


def constants(pte: str | Path, names: tuple[str, ...]) -> dict[str, Any]:
    """A program's constant metadata methods (`get_max_seq_len`, `get_eos_ids`, …) that it has,
    read without loading its weights or its `forward`."""
    from executorch.runtime import Runtime

    program = Runtime.get().load_program(str(pte))
    found = {}
    for name in names:
        if name in program.method_names:
            values = program.load_method(name).execute([])
            found[name] = values[0] if len(values) == 1 else list(values)
    return found


def context_length(pte: str | Path) -> int | None:
    """The tokens one generation may span: the least of the max sequence and context lengths."""
    lengths = constants(pte, ("get_max_seq_len", "get_max_context_len"))
    return min(int(v) for v in lengths.values()) if lengths else None


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
