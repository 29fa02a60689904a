"""The quantized program on the CPU beside fp32: QNN's only judge without a device.

Perplexity on held-out text, the weights' estimated size (`footprint`), and how well the
calibrated activation ranges hold on that text: the share of activation values the program
clips at its quantize steps (`ClipCounter`), which a longer calibration should lower.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from pipeline import layout
from pipeline.config import Config
from pipeline.evaluation import perplexity, scorers
from pipeline.llm import checks
from pipeline.progress import log
from pipeline.splits import read_jsonl

QUANTIZE = "quantized_decomposed.quantize_per_tensor.default"


def skipped(cfg: Config) -> str | None:
    """Why evaluate_quantized may skip the program, or None when it must (`eval.program_ppl`)."""
    if cfg.eval.program_ppl == "auto" and cfg.backend.name == "xnnpack":
        return ("backend=xnnpack: evaluate_llm measures the shipped .pte itself "
                "(eval.program_ppl=always measures the program too)")
    return None


class ClipCounter:
    """Counts, at every per-tensor quantize step of a program's graph, the values outside the
    calibrated range (clipped to quant_min or quant_max) among all the values it quantized."""

    def __init__(self, module: torch.fx.GraphModule) -> None:
        self.clipped: dict[int, int] = {}
        self.values: dict[int, int] = {}
        for index, node in enumerate([n for n in module.graph.nodes
                                      if n.op == "call_function" and str(n.target) == QUANTIZE]):
            with module.graph.inserting_before(node):
                module.graph.call_function(self._counter(index), node.args)
        module.recompile()

    def _counter(self, index: int) -> Any:
        self.clipped[index] = self.values[index] = 0

        def count(x: torch.Tensor, scale: Any, zero_point: Any, low: int, high: int,
                  dtype: Any) -> None:
            # A value is clipped when it rounds to a code beyond [low, high]: compared in the
            # value's own units, three ops per step (the graph has about a thousand per token).
            scale, zero_point = float(scale), float(zero_point)
            below, above = (low - 0.5 - zero_point) * scale, (high + 0.5 - zero_point) * scale
            self.clipped[index] += torch.count_nonzero((x < below) | (x > above))
            self.values[index] += x.numel()

        return count

    def summary(self) -> dict[str, Any]:
        clipped = {index: int(n) for index, n in self.clipped.items()}
        values = sum(self.values.values())
        return {"activation_clip_pct": round(100 * sum(clipped.values()) / max(values, 1), 4),
                "quantize_steps": len(self.values),
                "quantize_steps_clipping": sum(1 for n in clipped.values() if n)}


def run(cfg: Config, quantized: Path, model_dir: Path, split_dir: Path) -> dict:
    """Perplexity, estimated weight bytes and activation clipping of the quantized program."""
    reason = skipped(cfg)
    if reason:
        log(f"quantized program not measured: {reason}")
        return {"skipped": reason}
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pipeline.llm import export, footprint

    llm = checks.llm_config(cfg.model.executorch)
    context = llm.export.max_context_length
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    loaded = export.load_program(quantized / layout.PROGRAM)
    weight_bytes = footprint.weight_bytes(loaded)  # before the scorer folds the weights
    program = scorers.ProgramScorer(loaded, context)
    clipping = ClipCounter(program.module)
    reference = scorers.EagerScorer(
        AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32), context)
    texts = [record["text"] for record in read_jsonl(split_dir / layout.EVALUATION_SPLIT)]
    ids = perplexity.eval_tokens(texts, tokenizer, cfg.eval.program_max_tokens)
    windows = perplexity.windows(ids, min(cfg.eval.ppl_window, context))
    log(f"perplexity of the quantized program (CPU): {len(ids)} tokens, {len(windows)} windows")
    result = perplexity.score(program, reference, windows)
    return {**{key: result[key] for key in ("ppl", "ppl_reference", "ppl_delta_pct", "tokens")},
            "weight_bytes_estimate": weight_bytes, **clipping.summary()}
