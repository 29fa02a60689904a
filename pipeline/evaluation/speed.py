"""Speed and memory of a `.pte` in ExecuTorch's stock LLM runner, measured in a fresh process.

A fresh process keeps the figure honest: peak RSS is the runner's alone, not the evaluation
stage's (which also holds torch and the fp32 reference). Short questions give the familiar
figures; a held-out prompt of RAG's length (`eval.speed_long_prompt_tokens`) gives `long_prompt_*`,
the speed a RAG user sees: each decoded token then reads the whole cached prompt.
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


def held_out_prompt(texts: list[str], tokenizer_json: Path, length: int) -> tuple[str, list[int]]:
    """Held-out text of exactly `length` tokens, cut where re-encoding the text gives those very
    ids: a runner that encodes the text and one fed the ids see the same tokens."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_json))
    tokenizer.no_truncation()
    text = "\n\n".join(texts)
    encoded = tokenizer.encode(text, add_special_tokens=False)
    for end in range(min(length, len(encoded.ids)), max(length - 16, 0), -1):
        prefix = text[: encoded.offsets[end - 1][1]]
        ids = tokenizer.encode(prefix, add_special_tokens=False).ids
        if ids == encoded.ids[:end]:
            if len(ids) == length:
                return prefix, ids
            break  # the texts hold fewer than `length` tokens
    raise BadInput(f"the held-out text has no prefix of exactly {length} tokens that re-encodes "
                   "to itself (is it shorter?); choose another length.")


def measure(pte: Path, tokenizer: Path, max_new_tokens: int = 64, repeats: int = 1,
            long_prompt: str = "") -> dict:
    """Median prefill/decode tok/s, load time and peak RSS over PROMPTS × repeats, and with
    `long_prompt` the same figures for it as `long_prompt_*`."""
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.evaluation.speed", str(pte), str(tokenizer),
         str(max_new_tokens), str(repeats), long_prompt],
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


def _generate(runner: Any, prompt: str, max_new_tokens: int) -> tuple[dict[str, Any], float]:
    import time

    from executorch.extension.llm.runner import GenerationConfig

    from pipeline.runtime import runner_rates

    stats: list[Any] = []
    runner.reset()
    begin = time.monotonic()
    runner.generate(prompt, GenerationConfig(max_new_tokens=max_new_tokens, temperature=0.0,
                                             echo=False), lambda _piece: None, stats.append)
    return runner_rates(stats[-1]), time.monotonic() - begin


def _run(pte: str, tokenizer: str, max_new_tokens: int, repeats: int,
         long_prompt: str = "") -> dict[str, Any]:
    import tempfile

    from pipeline.device.pieces import runner_tokenizer
    from pipeline.runtime import text_runner

    # The pieces are not read, but the stock runner must not decode them: a token ending inside
    # a character (any SentencePiece byte token of Gemma's) fails in `generate` (pieces.py).
    workdir = tempfile.TemporaryDirectory(prefix="edgerag-speed-")
    runner = text_runner(pte, runner_tokenizer(Path(tokenizer), Path(workdir.name))[0])
    runs = [_generate(runner, prompt, max_new_tokens)
            for _ in range(repeats) for prompt in PROMPTS]
    figures = {
        "prefill_tok_s": round(median(r["prefill_tok_s"] for r, _ in runs), 1),
        "decode_tok_s": round(median(r["decode_tok_s"] for r, _ in runs), 1),
        "generate_wall_s": round(median(wall for _, wall in runs), 3),
        "load_s": round(max(r["load_s"] for r, _ in runs), 3),
    }
    if long_prompt:
        long = [_generate(runner, long_prompt, max_new_tokens)[0] for _ in range(repeats)]
        figures.update({
            "long_prompt_tokens": long[0]["prompt_tokens"],
            "long_prompt_ttft_ms": round(median(r["time_to_first_token_ms"] for r in long), 1),
            "long_prompt_decode_tok_s": round(median(r["decode_tok_s"] for r in long), 1),
        })
    return {**figures, "peak_rss_mb": _own_peak_rss_mb()}


if __name__ == "__main__":
    pte_path, tokenizer_path, new_tokens, runs, long_text = sys.argv[1:6]
    print(json.dumps(_run(pte_path, tokenizer_path, int(new_tokens), int(runs), long_text)))
