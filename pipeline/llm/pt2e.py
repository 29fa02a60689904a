"""PT2E quantization: annotate the exported graph, observe real calibration text, convert.

The scheme `schemes.SCHEMES["pt2e"]` uses for XNNPACK's static int8 and every QnnQuantizer recipe;
for QNN's 4-bit recipes calibration can also choose which linears stay at 8 bits and search the
weight scales (pipeline/llm/qnn_tuning.py).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch

from pipeline import layout
from pipeline.config import QuantConfig
from pipeline.errors import BadInput
from pipeline.llm import export
from pipeline.progress import bar, log


def _takes_one_token(program: Any) -> bool:
    """A static-shape program (QNN's) is the runner's one-token decode step; feed it that way."""
    tokens = next(node for node in program.graph.nodes if node.op == "placeholder"
                  and node.name == program.graph_signature.user_inputs[0])
    return not isinstance(tokens.meta["val"].shape[-1], torch.SymInt)


def _observe_unrecorded_weights(prepared: torch.fx.GraphModule, recorded: set[str]) -> None:
    """Observe constant weights whose observers calibration does not record.

    torchao's affine observers (QNN's per-block one) are not `ObserverBase` and keep min/max
    outside `state_dict`; a weight's statistics come from the weight, so observing it again here
    gives exactly what calibration saw.
    """
    from operator import attrgetter

    for node in _weight_observer_nodes(prepared):
        if node.target not in recorded:
            prepared.get_submodule(node.target)(attrgetter(node.args[0].target)(prepared))


def _weight_observer_nodes(prepared: torch.fx.GraphModule) -> list[torch.fx.Node]:
    return [node for node in prepared.graph.nodes
            if node.op == "call_module" and node.args and node.args[0].op == "get_attr"]


def _freeze_weight_observers(prepared: torch.fx.GraphModule) -> None:
    """After one call, observers of constant weights have seen all they ever will.

    Re-observing every weight on every calibration token dominated QNN calibration (one token per
    call over a 135M model); from here they pass values through with their statistics intact.
    """
    for node in _weight_observer_nodes(prepared):
        prepared.get_submodule(node.target).forward = _identity


def _identity(value: torch.Tensor) -> torch.Tensor:
    return value


# Ops that only move values: their output observers carry the logits' range onward.
_RESHAPES = {"view", "reshape", "permute", "squeeze", "unsqueeze", "transpose", "select",
             "slice", "clone", "_to_copy"}


def logits_observers(prepared: torch.fx.GraphModule) -> list[str]:
    """The observers between the output head and the program's first output (the logits)."""
    output = next(node for node in prepared.graph.nodes if node.op == "output")
    node = output.args[0]
    node = node[0] if isinstance(node, tuple | list) else node
    names = []
    while isinstance(node, torch.fx.Node):
        if node.op == "call_module":
            names.append(node.target)
        elif not (node.op == "call_function"
                  and node.target.__name__.split(".")[0] in _RESHAPES):
            break
        node = node.args[0]
    return names


def widen_logits(prepared: torch.fx.GraphModule, margin: float) -> list[str]:
    """Scale the calibrated min/max of the logits' observers by `margin`; their names.

    Static activation ranges come from the fp32 model on the calibration split. The 4-bit model
    on unseen text produces top logits up to 1.9x beyond that range (SmolLM2-135M, QNN 16a4w
    block-64, 96 held-out tokens), and clipping the top logits flattens exactly the predictions
    that count: perplexity 99.8, against 38.8 with the range doubled. At 16 bits, 3x the range
    still resolves the logits in steps of about 0.003.
    """
    names = logits_observers(prepared)
    seen: set[int] = set()  # observers of shared ranges hold one tensor: scale it once
    for name in names:
        observer = prepared.get_submodule(name)
        for attr in ("min_val", "max_val"):
            value = getattr(observer, attr, None)
            if (isinstance(value, torch.Tensor) and value.numel() and value.data_ptr() not in seen
                    and torch.isfinite(value).all()):
                seen.add(value.data_ptr())
                value.mul_(margin)
    return names


@dataclasses.dataclass
class Observed:
    """What PT2E calibration keeps: every observer's state and, for QNN's 4-bit recipes, the
    mixed-precision plan (`quant.mixed`) and SeqMSE's weight-scale factors."""

    observers: dict[str, dict[str, torch.Tensor]]
    plan: dict[str, Any] | None = None
    seq_mse: dict[str, float] | None = None


def _eight_bit(plan: dict[str, Any] | None) -> list[str]:
    layers = (plan or {}).get("layers", {})
    return sorted(name for name, choice in layers.items() if choice["bits"] == 8)


class Pt2eStatic:
    """PT2E: annotate the exported graph, observe real calibration text, convert."""

    def uses_calibration(self, quant: QuantConfig) -> bool:
        return True

    def _prepare(self, quant: QuantConfig, program: Any, plan: dict | None = None) -> Any:
        from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e

        from pipeline.llm import quantizers

        return prepare_pt2e(program.module(), quantizers.build(quant, _eight_bit(plan)))

    def _plan(self, quant: QuantConfig, program: Any, samples: list[torch.Tensor],
              model_dir: Path) -> dict[str, Any]:
        """Which 4-bit linears to keep at 8 bits: measured on the fp32 model, QNN's grids."""
        from transformers import AutoModelForCausalLM

        from pipeline.llm import qnn_tuning, sensitivity

        prepared = self._prepare(quant, program)  # fresh observers: the grids to measure
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        measured = sensitivity.measure_grids(model, samples[: quant.mixed.samples],
                                             qnn_tuning.grid(prepared), quant.name,
                                             qnn_tuning.four_bit_linears(prepared))
        return sensitivity.plan(measured, quant.mixed, qnn_tuning.tensor_bytes)

    def calibrate(self, quant: QuantConfig, program: Any, samples: list[torch.Tensor],
                  **context: Any) -> Observed:
        from torchao.quantization.pt2e import ObserverBase

        from pipeline.llm import qnn_tuning

        plan = None
        if quant.mixed is not None:
            plan = self._plan(quant, program, samples, context["model_dir"])
        prepared = self._prepare(quant, program, plan)
        candidates = quant.pt2e.seq_mse_candidates
        search = qnn_tuning.SeqMseSearch(prepared, candidates) if candidates else None
        steps = None
        one_token_per_call = _takes_one_token(program)
        with torch.no_grad():
            for index, tokens in enumerate(bar(samples, desc="calibrating", unit="sample")):
                if one_token_per_call:
                    for position, token in enumerate(tokens):
                        prepared(token.view(1, 1), {"input_pos": torch.tensor([position])})
                        if index == position == 0:
                            _freeze_weight_observers(prepared)
                else:
                    prepared(tokens.unsqueeze(0),
                             {"input_pos": torch.tensor([0], dtype=torch.long)})
                if search is not None and index == 0:  # the first sample, as ExecuTorch
                    steps, search = search.finish(), None
        observers = {name: module.state_dict() for name, module in prepared.named_modules()
                     if isinstance(module, ObserverBase)}
        return Observed(observers, plan, steps)

    def save(self, stats: Observed, samples: list[torch.Tensor], out: Path) -> dict[str, Any]:
        """The observers' state dicts as torch tensors; the plan and scale factors as JSON."""
        torch.save(stats.observers, out / layout.OBSERVER_STATS)
        notes: dict[str, Any] = {"tokens": sum(len(s) for s in samples),
                                 "observers": len(stats.observers)}
        if stats.plan is not None or stats.seq_mse is not None:
            plan = {**(stats.plan or {}), "seq_mse": stats.seq_mse}
            (out / layout.PLAN).write_text(json.dumps(plan, indent=2, sort_keys=True) + "\n")
            notes.update(plan=layout.PLAN, eight_bit=_eight_bit(stats.plan),
                         estimated_bytes=(stats.plan or {}).get("estimated_bytes"),
                         seq_mse_layers=len(stats.seq_mse or {}))
        return notes

    def load(self, folder: Path) -> Observed | None:
        stats = folder / layout.OBSERVER_STATS
        if not stats.exists():
            return None
        saved = folder / layout.PLAN
        plan = json.loads(saved.read_text()) if saved.exists() else {}
        steps = plan.pop("seq_mse", None)
        return Observed(torch.load(stats, weights_only=True), plan or None, steps)

    def quantize(self, quant: QuantConfig, program: Any, params: dict, llm: Any,
                 metadata: dict, stats: Observed) -> Any:
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

        from pipeline.llm import qnn_tuning

        prepared = self._prepare(quant, program, stats.plan)
        observers = dict(prepared.named_modules())
        for name, state in stats.observers.items():
            if name not in observers:
                raise BadInput(f"calibration statistics do not fit this graph (no {name}).")
            observers[name].load_state_dict(state)
        _observe_unrecorded_weights(prepared, set(stats.observers))
        if stats.seq_mse:
            scaled = qnn_tuning.apply_steps(prepared, stats.seq_mse)
            log(f"SeqMSE weight scales applied to {scaled} layers")
        if quant.pt2e.logits_margin != 1.0:
            widened = widen_logits(prepared, quant.pt2e.logits_margin)
            log(f"logits range widened {quant.pt2e.logits_margin}x in {len(widened)} observers")
        converted = convert_pt2e(prepared)
        manager = export.edge_manager(converted, llm, metadata, quant.name)
        manager.pre_autograd_graph_module = converted
        return manager._export(converted)
