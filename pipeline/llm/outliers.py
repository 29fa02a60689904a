"""The output head's massive input channels, kept in fp32 beside its 8-bit activations.

XNNPACK quantizes a linear's input per token to int8 between its min and max. SmolLM2's final
hidden state has one channel far larger than the rest, so that one channel sets the step for all
576 and the head's logits lose the most of any layer (+0.4% perplexity of the +2.2% a Q4_1 grid
costs, measured eagerly). The head therefore sees its input with those channels zeroed, and a
tiny fp32 linear adds them back exactly. The head's own weight is untouched, so it still
quantizes to the same bytes as the tied embedding table and is stored once.
"""

from __future__ import annotations

import torch


def find(model: torch.nn.Module, samples: list[torch.Tensor], count: int) -> list[int]:
    """The `count` channels of the head's input with the largest magnitude on `samples`."""
    peaks: list[torch.Tensor] = []
    head = model.get_output_embeddings()
    hook = head.register_forward_pre_hook(
        lambda module, args: peaks.append(args[0].detach().abs().amax(dim=(0, 1))))
    with torch.no_grad():
        for tokens in samples:
            model(tokens.unsqueeze(0))
    hook.remove()
    return sorted(torch.stack(peaks).amax(0).topk(count).indices.tolist())


class OutlierHead(torch.nn.Module):
    """`head(h * mask) + side(pick(h))`: the kept channels bypass the head's int8 activations."""

    def __init__(self, head: torch.nn.Module, channels: list[int], columns: torch.Tensor):
        super().__init__()
        width = columns.shape[0], len(channels)
        dim = head.in_features if hasattr(head, "in_features") else head.weight.shape[1]
        mask = torch.ones(dim)
        mask[channels] = 0.0
        self.head = head
        self.register_buffer("mask", mask)
        # Picking channels as a one-hot fp32 linear keeps the whole head inside XNNPACK.
        self.pick = torch.nn.Linear(dim, len(channels), bias=False)
        self.pick.weight = torch.nn.Parameter(torch.zeros(len(channels), dim), requires_grad=False)
        for row, channel in enumerate(channels):
            self.pick.weight.data[row, channel] = 1.0
        self.side = torch.nn.Linear(len(channels), width[0], bias=False)
        self.side.weight = torch.nn.Parameter(columns.float(), requires_grad=False)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.head(hidden * self.mask) + self.side(self.pick(hidden))
