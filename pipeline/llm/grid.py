"""Keep a GGUF's Q4_1 (or Q4_0, `_q4_0`) grid exactly instead of re-quantizing its floats.

Q4_1 stores each group of 32 weights as `w = d*q + m` (q in 0..15, a float scale d and a float
minimum m). torchao's asymmetric 4-bit grid has an integer zero point, so re-quantizing moves
every group by up to half a step, the same way for all 32 weights: +23% perplexity on
SmolLM2-135M. XNNPACK's fast 4-bit kernel takes symmetric groups only, so the grid is split:

    w = d*(q - 8)  +  (m + 8d)
        symmetric 4-bit, scale d:    exact, one XNNPACK 8da4w linear
        per-group offset b:          one float per group of 32 inputs

and `x @ w.T = y + corr(s)`, where one XNNPACK 8da4w linear computes both `y` (the symmetric
part) and, in G extra output rows, `s`, the sum of each input group of 32 (codes 4 at scale 1/4:
exactly 1 over the group, 0 elsewhere). `corr` holds the offsets at 8 bits per row. The sums come
from the same int8 activations as `y`, as in llama.cpp's Q4_1 x Q8_1 dot product, and cost no
extra linear. Siblings that read one input (q/k/v, gate/up) share one such pair: their rows are
stacked, so a layer runs four 4-bit GEMMs instead of seven, which pays for the corrections.
The slices of `main`'s output run outside XNNPACK's delegate, which does not slice dynamic shapes.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import torch

from pipeline.errors import BadInput

GROUP = 32
KINDS = ("q4_1", "q4_0")  # the GGUF grids kept exactly (quant.source_grid)
LEVELS = 15  # 4 bits, unsigned
# Weights dequantized from Q4_1 land on the grid up to float rounding; anything further is not.
TOLERANCE = 1e-3


class GridLinear(torch.nn.Module):
    """`y + corr(s)` where `main(x) = [y, s]`: a Q4_1 linear in two XNNPACK linears (module doc).

    `y` may stack several siblings' outputs (`sizes`); `part(x, i)` is sibling i's share.
    """

    def __init__(self, main: torch.nn.Linear, corr: torch.nn.Linear, sizes: list[int],
                 codes: torch.Tensor, scales: torch.Tensor) -> None:
        super().__init__()
        self.main, self.corr, self.sizes = main, corr, sizes
        # Not parameters: what `pin` writes into the quantized tensor after quantize_.
        self.codes, self.scales = codes, scales
        self._served: set[int] = set()  # siblings given their part of the current input
        self._last: Any = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out_features = sum(self.sizes)
        both = self.main(x)
        return both[..., :out_features] + self.corr(both[..., out_features:])

    def part(self, x: torch.Tensor, index: int) -> torch.Tensor:
        """Sibling `index`'s output. The model calls each sibling on the same tensor; the stacked
        linear runs on the first call and is dropped once every sibling has its part."""
        if self._last is None or self._last[0] is not x or index in self._served:
            y = self(x)
            self._last = (x, y.split(self.sizes, -1))
            self._served = set()
        self._served.add(index)
        result = self._last[1][index]
        if len(self._served) == len(self.sizes):
            self._last, self._served = None, set()
        return result


class Sibling(torch.nn.Module):
    """Stands in for one of the stacked linears: its part of the shared GridLinear's output."""

    def __init__(self, shared: GridLinear, index: int) -> None:
        super().__init__()
        self.index = index
        # Not a submodule: the stack is registered once, on the parent, so quantize_ sees it once.
        object.__setattr__(self, "shared", shared)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shared.part(x, self.index)


def decompose(weight: torch.Tensor, name: str,
              kind: str = "q4_1") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(codes in -8..7, scale per group, offset per group) with `codes*scale + offset == weight`,
    for weights dequantized from a GGUF grid of `kind` (q4_1 or q4_0)."""
    out_features, in_features = weight.shape
    if in_features % GROUP:
        raise BadInput(f"{name} has width {in_features}, which is not a multiple of {GROUP}: "
                       f"it cannot hold a {kind.upper()} grid.")
    groups = weight.detach().double().view(out_features, -1, GROUP)
    codes, step, offsets = (_q4_0 if kind == "q4_0" else _q4_1)(groups)
    safe = torch.where(step > 0, step, torch.ones_like(step))
    error = ((codes * step + offsets - groups).abs() / safe).max().item()
    if error > TOLERANCE:
        raise BadInput(
            f"{name} is not on a 4-bit group-{GROUP} {kind.upper()} grid (off by {error:.2f} of "
            f"a step): quant.source_grid={kind} only fits weights dequantized from a "
            f"{kind.upper()} GGUF; use a re-quantizing recipe such as quant=8da4w_g32 for it."
        )
    return (codes.to(torch.int8).view(out_features, in_features),
            step.squeeze(-1).float(), offsets.squeeze(-1).float())


def _on_a_float_grid(weight: torch.Tensor, fqn: str) -> tuple | None:
    if weight.shape[1] % GROUP:
        return None
    for kind in KINDS:
        try:
            return decompose(weight, fqn, kind)
        except BadInput:
            continue
    return None


def _q4_1(groups: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Q4_1: `w = d*q + m`, q in 0..15, so `w = d*(q - 8) + (m + 8d)`."""
    low, high = groups.amin(-1, keepdim=True), groups.amax(-1, keepdim=True)
    step = (high - low) / LEVELS
    safe = torch.where(step > 0, step, torch.ones_like(step))
    codes = ((groups - low) / safe).round().clamp(0, LEVELS)
    return codes - 8, step, low + 8 * step


def _q4_0(groups: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Q4_0: `w = d*k`, k in -8..7, with llama.cpp's `d = -peak/8` (the peak, the group's largest
    magnitude, is code -8), so d is negative wherever the peak is positive. XNNPACK refuses
    negative scales, and `|d|*(-k)` needs code 8 for the peak; so those groups become
    `|d|*(-k - 1) + |d|`: codes in -8..7 at scale |d| plus an offset of one step, which the
    Q4_1 machinery (main + corr) carries exactly. Groups with a negative peak need no offset."""
    peak = groups.gather(-1, groups.abs().argmax(-1, keepdim=True))
    d = -peak / 8
    safe = torch.where(d != 0, d, torch.ones_like(d))
    k = (groups / safe).round().clamp(-8, 7)
    flipped = d < 0
    step = d.abs()
    return torch.where(flipped, -k - 1, k), step, torch.where(flipped, step, torch.zeros_like(d))


def digest(weight: np.ndarray | torch.Tensor) -> str:
    """The sha256 of a matrix's float32 bytes, row-major: how a linear finds its source grid."""
    if isinstance(weight, torch.Tensor):
        weight = weight.detach().to(torch.float32).contiguous().numpy()
    return hashlib.sha256(np.ascontiguousarray(weight, dtype=np.float32).tobytes()).hexdigest()


def known(model: torch.nn.Module, grids: dict[str, Any]) -> dict[str, Any]:
    """fqn → (codes, scales, offsets) of every linear (not the head) on a 4-bit GGUF grid.

    A linear whose weight digest `grids` holds (gguf_grids.load: Q4_K) takes the file's own
    step and offset per group, `w = step*q + offset` with q in 0..15, as `step*(q - 8) +
    (offset + 8*step)` (the same split as Q4_1's); any other linear whose floats decompose
    exactly onto a Q4_1 or Q4_0 grid takes that; the rest are not on a 4-bit grid.
    """
    found = {}
    for fqn, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear) or fqn == "output":
            continue
        source = grids.get(digest(module.weight))
        if source is None:
            on_floats = _on_a_float_grid(module.weight, fqn)
            if on_floats is not None:
                found[fqn] = on_floats
            continue
        out_features, in_features = module.weight.shape
        steps = torch.from_numpy(source.steps).double()
        codes = torch.from_numpy(source.codes.astype(np.int16) - 8).to(torch.int8)
        offsets = torch.from_numpy(source.offsets).double() + 8 * steps
        found[fqn] = (codes.view(out_features, in_features),
                      steps.view(out_features, -1).float(), offsets.view(out_features, -1).float())
    return found


# The pooling rows' grid: code 4 at scale 1/4 is exactly 1 (bf16 holds 1/4 exactly).
POOL_CODE, POOL_SCALE = 4, 0.25


def _pool_rows(in_features: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes, scales) of G rows that sum each group of 32 inputs: row g has 1s on group g."""
    groups = in_features // GROUP
    codes = torch.zeros(groups, groups, GROUP, dtype=torch.int8)
    codes[torch.arange(groups), torch.arange(groups)] = POOL_CODE
    return codes.view(groups, in_features), torch.full((groups, groups), POOL_SCALE)


# Linears that read the same input, by attribute name in ExecuTorch's Llama: stacked into one.
SIBLINGS = (("wq", "wk", "wv"), ("w1", "w3"))


def _grid_linear(linears: list[torch.nn.Linear], names: list[str], kind: str,
                 known: dict[str, Any]) -> GridLinear:
    """One GridLinear holding `linears` stacked (all read the same input); a linear's parts are
    `known[name]` when given (read from the source file), else decomposed from its floats."""
    parts = [known[name] if name in known else decompose(linear.weight, name, kind)
             for linear, name in zip(linears, names, strict=True)]
    in_features = linears[0].in_features
    pool_codes, pool_scales = _pool_rows(in_features)
    codes = torch.cat([p[0] for p in parts] + [pool_codes])
    scales = torch.cat([p[1] for p in parts] + [pool_scales])
    rows = codes.shape[0]
    main = torch.nn.Linear(in_features, rows, bias=False)
    dense = codes.float().view(rows, -1, GROUP) * scales.unsqueeze(-1)
    main.weight = torch.nn.Parameter(dense.view(rows, -1), requires_grad=False)
    offsets = torch.cat([p[2] for p in parts])
    corr = torch.nn.Linear(in_features // GROUP, offsets.shape[0], bias=False)
    corr.weight = torch.nn.Parameter(offsets, requires_grad=False)
    return GridLinear(main, corr, [linear.out_features for linear in linears], codes, scales)


def split(model: torch.nn.Module, keep: Any, kind: str = "q4_1",
          known: dict[str, Any] | None = None) -> list[str]:
    """Replace every linear that `keep(fqn)` leaves to the grid; the names replaced. `known`:
    fqn → (codes, scales, offsets) of linears whose grid the source file gives (gguf_grids).

    Siblings (SIBLINGS) all kept become one GridLinear registered on their parent as `wq_wk_wv`
    or `w1_w3`, each sibling a `Sibling` view of it; any other linear becomes its own GridLinear.
    """
    kept = {fqn: module for fqn, module in model.named_modules()
            if isinstance(module, torch.nn.Linear) and keep(fqn)}
    replaced = []
    for fqn in list(kept):
        if fqn not in kept:  # already stacked with an earlier sibling
            continue
        parent_name, _, attr = fqn.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        family = next((f for f in SIBLINGS if f[0] == attr), ())
        names = [f"{parent_name}.{a}" if parent_name else a for a in family]
        if len(names) > 1 and all(name in kept for name in names):
            shared = _grid_linear([kept.pop(name) for name in names], names, kind, known or {})
            setattr(parent, "_".join(family), shared)
            for index, sibling in enumerate(family):
                setattr(parent, sibling, Sibling(shared, index))
            replaced += names
            continue
        setattr(parent, attr, _grid_linear([kept.pop(fqn)], [fqn], kind, known or {}))
        replaced.append(fqn)
    return replaced


def pin(model: torch.nn.Module) -> None:
    """After torchao quantized each `main`: make its codes and scales the source's, bit for bit.

    torchao picks a symmetric scale from the group's largest magnitude (8d/7.5 here, not d), which
    would round a second time; the grid's own codes and scales go in instead.
    """
    for fqn, module in model.named_modules():
        if not isinstance(module, GridLinear):
            continue
        weight = module.main.weight
        for part, value in (("qdata", module.codes), ("scale", module.scales)):
            target = getattr(weight, part, None)
            if target is None or target.shape != value.shape:
                raise RuntimeError(f"{fqn}.main: unexpected quantized layout for {part}")
            target.copy_(value.to(target.dtype))
        weight.zero_point.zero_()
        del module.codes, module.scales
