"""Speed and memory of a `.pte` in ExecuTorch's stock LLM runner, measured in a fresh process.

A fresh process keeps the figure honest: peak RSS is the runner's alone, not the evaluation
stage's (which also holds torch and the fp32 reference).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from statistics import median
from typing import Any

from pipeline.errors import BadInput

PROMPTS = (
    "Explain what a Python decorator does.",
    "What is the difference between a list and a tuple?",
    "Describe how the with statement manages resources.",
)


def measure(pte: Path, tokenizer: Path, max_new_tokens: int = 64, repeats: int = 1) -> dict:
    """Median prefill/decode tok/s, load time and peak RSS over PROMPTS × repeats."""
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.evaluation.speed", str(pte), str(tokenizer),
         str(max_new_tokens), str(repeats)],
        capture_output=True, text=True,
    )
    if result.returncode != 0:
        tail = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise BadInput(f"the stock runner could not run {pte}: {tail}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def _own_peak_rss_mb() -> float:
    """This process's high-water RSS (VmHWM): unlike ru_maxrss it is not inherited across exec."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024.0, 1)
    raise RuntimeError("/proc/self/status has no VmHWM line")


def _run(pte: str, tokenizer: str, max_new_tokens: int, repeats: int) -> dict[str, Any]:
    import time

    from executorch.extension.llm.runner import GenerationConfig

    from pipeline.runtime import runner_rates, text_runner

    runner = text_runner(pte, tokenizer)
    prefill, decode, wall, load_s = [], [], [], []
    for _ in range(repeats):
        for prompt in PROMPTS:
            stats: list[Any] = []
            runner.reset()
            begin = time.monotonic()
            runner.generate(prompt, GenerationConfig(max_new_tokens=max_new_tokens,
                                                     temperature=0.0, echo=False),
                            lambda _piece: None, stats.append)
            wall.append(time.monotonic() - begin)
            rates = runner_rates(stats[-1])
            load_s.append(rates["load_s"])
            prefill.append(rates["prefill_tok_s"])
            decode.append(rates["decode_tok_s"])
    return {
        "prefill_tok_s": round(median(prefill), 1),
        "decode_tok_s": round(median(decode), 1),
        "generate_wall_s": round(median(wall), 3),
        "load_s": round(max(load_s), 3),
        "peak_rss_mb": _own_peak_rss_mb(),
    }


if __name__ == "__main__":
    pte_path, tokenizer_path, new_tokens, runs = sys.argv[1:5]
    print(json.dumps(_run(pte_path, tokenizer_path, int(new_tokens), int(runs))))
