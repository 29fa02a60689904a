"""Where a decoded token's time goes: ExecuTorch's ETDump, per operator, for one `.pte`.

`python -m bench.profile PTE [--steps N] [--instances K] [--context N]` prints each XNNPACK
operator and each ExecuTorch kernel run outside the delegate with its calls and milliseconds per
decoded token, and with `--instances` the K costliest single ops: one big GEMM (the head) hides
among a hundred small ones under the same name. This is how the decode gap of issue #7 was found:
six attention transposes per layer that export_llm's canonical pass removes, the Q4_1 grid's
separate pooling linears, and the int8 head. With `--context N` each decoded token attends to N
earlier positions: where a long prompt's decode goes (issue #22).
"""

from __future__ import annotations

import argparse
import collections
import tempfile
from dataclasses import dataclass
from pathlib import Path

# Events that wrap others (their time is the sum of what they contain) or happen once at load.
ENVELOPES = {"Method::execute", "Method::init", "Program::load_method", "DELEGATE_CALL",
             "OPERATOR_CALL"}


@dataclass(frozen=True)
class OpCost:
    name: str
    calls_per_token: float
    ms_per_token: float


def profile(pte: str | Path, steps: int = 16, prompt: tuple[int, ...] = (1, 5, 7, 9)
            ) -> dict[str, OpCost | float]:
    """Prefill `prompt`, then time `steps` single-token decodes with ETDump on.

    Returns each operator's cost per decoded token (prefill excluded); under "delegate_calls", how
    many times a token crosses into a delegate (the partitioning's own overhead); and under
    "instances", every single op as (ms per token, position in the program, name), costliest first.
    """
    import torch
    from executorch.devtools import Inspector

    from pipeline.runtime import bindings, data_path

    module = bindings()._load_for_executorch(str(pte), data_path(pte), enable_etdump=True)
    module.run_method("forward", (torch.tensor([list(prompt)]), torch.tensor([0])))
    for step in range(steps):
        module.run_method("forward", (torch.tensor([[prompt[-1]]]),
                                      torch.tensor([len(prompt) + step])))
    with tempfile.TemporaryDirectory() as scratch:
        dump = Path(scratch) / "run.etdp"
        module.write_etdump_result_to_file(str(dump))
        blocks = Inspector(etdump_path=str(dump)).event_blocks
    calls, millis = collections.Counter(), collections.Counter()
    instances = []
    for block in blocks:
        for position, event in enumerate(block.events):
            if event.perf_data is None:
                continue
            raw = list(event.perf_data.raw)
            # An op inside the forward runs k times per call: drop the prefill call's first k.
            per_call, rest = divmod(len(raw), steps + 1)
            samples = raw[per_call:] if rest == 0 else raw
            calls[event.name] += len(samples)
            millis[event.name] += sum(samples)
            if event.name not in ENVELOPES:
                instances.append((sum(samples) / steps, position, event.name))
    costs: dict[str, OpCost | float] = {
        name: OpCost(name, calls[name] / steps, millis[name] / steps)
        for name in calls if name not in ENVELOPES
    }
    costs["delegate_calls"] = calls["DELEGATE_CALL"] / steps
    costs["instances"] = sorted(instances, reverse=True)
    return costs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    parser.add_argument("pte")
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--instances", type=int, default=0, metavar="K",
                        help="also list the K costliest single ops")
    parser.add_argument("--context", type=int, default=4, metavar="N",
                        help="prefill N tokens first, so each decode attends to N+ positions")
    args = parser.parse_args(argv)
    prompt = tuple(5 + position % 1000 for position in range(max(args.context, 1)))
    costs = profile(args.pte, args.steps, prompt)
    delegate_calls = costs.pop("delegate_calls")
    instances = costs.pop("instances")
    ops = sorted(costs.values(), key=lambda c: -c.ms_per_token)
    total = sum(c.ms_per_token for c in ops)
    print(f"{'operator':52s} {'calls/token':>11s} {'ms/token':>9s} {'share':>6s}")
    for cost in ops:
        print(f"{cost.name[:52]:52s} {cost.calls_per_token:11.1f} {cost.ms_per_token:9.3f} "
              f"{100 * cost.ms_per_token / max(total, 1e-9):5.1f}%")
    print(f"delegate calls per token: {delegate_calls:.0f}; operator time per token: "
          f"{total:.2f} ms")
    if args.instances:
        print(f"\n{'costliest single ops':52s} {'position':>11s} {'ms/token':>9s}")
        for millis, position, name in instances[:args.instances]:
            print(f"{name[:52]:52s} {position:11d} {millis:9.3f}")


if __name__ == "__main__":
    main()
