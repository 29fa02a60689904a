"""What the output head's precision costs in perplexity: why `q4_1_grid` keeps an int8 head.

`python -m bench.head_precision [--model data/model] [--split data/split]` scores the fp32 model
eagerly on the evaluate stage's held-out windows with the tied embedding at int8 per row and the
head's weight swapped for each variant below (the linears stay fp32, so only the head differs):

- `int8`: per row, what `q4_1_grid` ships (the head shares the embedding table's bytes);
- `4bit`: XNNPACK's symmetric group-32 grid, what export_llm's stock recipe ships;
- `4bit ids>=K`: rows below K kept int8 (BPE ids are roughly frequency-ordered);
- `4bit top-k`: 4-bit logits, then the k largest recomputed from the int8 rows.

The last two read fewer head bytes per token than `int8` but each needs a 4-bit copy beside the
int8 embedding table (10-16 MB), which the 100 MB budget of issue #7 does not hold.
The head's massive input channel (`head_outliers`) is kept fp32 in every variant, found on the
calibration split.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import torch

from pipeline import layout

Head = Callable[[torch.Tensor], torch.Tensor]


def int8_rows(weight: torch.Tensor) -> torch.Tensor:
    """torchao's symmetric int8 per row, dequantized (`embedding: {bits: 8, group_size: 0}`)."""
    from pipeline.llm.sensitivity import fake_quantize

    return fake_quantize(weight, 8, 0, True)


def int4_groups(weight: torch.Tensor, group: int = 32) -> torch.Tensor:
    """torchao's symmetric 4-bit groups, dequantized: what XNNPACK's 8da4w head holds."""
    from pipeline.llm.sensitivity import fake_quantize

    return fake_quantize(weight, 4, group, True)


def variants(weight: torch.Tensor, keep: list[int], split_ids: list[int], top_ks: list[int]
             ) -> dict[str, Head]:
    """Each head variant as a function of the final hidden state; `keep` columns stay exact."""
    def exact_columns(approx: torch.Tensor) -> torch.Tensor:
        approx = approx.clone()
        approx[:, keep] = weight[:, keep]
        return approx

    rows8, rows4 = exact_columns(int8_rows(weight)), exact_columns(int4_groups(weight))
    heads: dict[str, Head] = {"int8": lambda h: h @ rows8.T, "4bit": lambda h: h @ rows4.T}
    for first in split_ids:
        mixed = torch.cat([rows8[:first], rows4[first:]])
        heads[f"4bit ids>={first}"] = lambda h, w=mixed: h @ w.T
    for k in top_ks:
        def refined(h: torch.Tensor, k: int = k) -> torch.Tensor:
            approx = h @ rows4.T
            ids = approx.topk(k, -1).indices
            return approx.scatter(-1, ids, (rows8[ids] * h.unsqueeze(-2)).sum(-1))
        heads[f"4bit top-{k}"] = refined
    return heads


def perplexities(hidden: list[torch.Tensor], windows: list[list[int]],
                 heads: dict[str, Head]) -> dict[str, float]:
    """Perplexity of each head on the windows' next tokens, from precomputed hidden states."""
    from pipeline.evaluation.perplexity import perplexity

    result = {}
    for name, head in heads.items():
        nlls: list[float] = []
        for states, window in zip(hidden, windows, strict=True):
            logprobs = head(states[:-1]).log_softmax(-1)
            nlls += (-logprobs.gather(-1, torch.tensor(window[1:])[:, None])).squeeze(-1).tolist()
        result[name] = perplexity(nlls)
    return result


def main(argv: list[str] | None = None) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pipeline.evaluation.perplexity import eval_tokens, windows
    from pipeline.llm import outliers
    from pipeline.splits import read_jsonl

    parser = argparse.ArgumentParser(prog="python -m bench.head_precision", description=__doc__)
    parser.add_argument("--model", type=Path, default=Path(layout.MODEL))
    parser.add_argument("--split", type=Path, default=Path(layout.SPLIT))
    parser.add_argument("--tokens", type=int, default=2048, help="held-out tokens (eval default)")
    parser.add_argument("--split-ids", type=int, nargs="*", default=[8192, 16384])
    parser.add_argument("--top-k", type=int, nargs="*", default=[64, 256])
    args = parser.parse_args(argv)

    def texts(name: str) -> list[str]:
        return [record["text"] for record in read_jsonl(args.split / name)]

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    weight = model.get_output_embeddings().weight.detach().clone()
    with torch.no_grad():
        model.get_input_embeddings().weight.copy_(int8_rows(weight))
        calibration = torch.tensor(eval_tokens(texts(layout.CALIBRATION_SPLIT), tokenizer, 512))
        keep = outliers.find(model, [calibration], 1)
        held_out = windows(eval_tokens(texts(layout.EVALUATION_SPLIT), tokenizer, args.tokens), 512)
        hidden = [model.model(torch.tensor([w])).last_hidden_state[0] for w in held_out]
        heads = {"fp32": lambda h: h @ weight.T,
                 **variants(weight, keep, args.split_ids, args.top_k)}
        scores = perplexities(hidden, held_out, heads)
    reference = scores["int8"]
    print(f"{'head':18s} {'perplexity':>10s} {'vs int8':>8s}")
    for name, value in scores.items():
        print(f"{name:18s} {value:10.4f} {100 * (value / reference - 1):+7.2f}%")


if __name__ == "__main__":
    main()
