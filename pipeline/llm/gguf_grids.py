"""A GGUF's Q4_K grids, carried from the file to the quantizer (`quant.source_grid=gguf`).

The grid cannot be read back from the dequantized floats the way `q4_1_grid` does: a Q4_K
group's step is `d*scale` and its offset `-dmin*min`, and a fifth of real groups (21.4% of
Gemma 3 270M's) never use code 0 or 15, so their floats do not show the step. fetch_model keeps
each Q4_K matrix's raw blocks beside the fp32 weights (`GRIDS` in data/model), keyed by the
sha256 of the float32 weights they decode to. The quantizer finds a linear's grid by that digest
of its own weight: no name mapping between GGUF, transformers and ExecuTorch is trusted, and a
converter that permuted or rescaled a matrix simply finds no grid for it (it takes the recipe's
bits instead).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.llm import grid, kquants
from pipeline.progress import log

GRIDS = "gguf_grids.safetensors"  # in MODEL
KEPT = ("Q4_K",)  # 4-bit, per-32 step and offset: what grid.GridLinear carries


def keep(source: Any, types: dict[str, int], out: Path) -> dict[str, int]:
    """fetch_model's part: say what the GGUF's types cost, and keep its Q4_K grids in `out`."""
    from pipeline.sources import materialize

    if not types:
        return {}
    log(note(types))
    kept = write(materialize(source), out) if any(t in KEPT for t in types) else 0
    return {"gguf_grids_kept": kept} if kept else {}


def note(types: dict[str, int]) -> str:
    """One line on what loading these GGML types costs: only grids a recipe keeps are free."""
    recipe = {**{t.upper(): f"quant={t}_grid" for t in grid.KINDS},
              **{t: "quant=gguf_grid" for t in KEPT}}
    kept = [t for t in types if t in recipe]
    rounded = [f"{t} ×{n}" for t, n in types.items()
               if t not in kept and t not in ("F32", "F16", "BF16")]
    line = f"GGUF matrices: {', '.join(f'{t} ×{n}' for t, n in types.items())}."
    if kept:
        recipes = " or ".join(dict.fromkeys(recipe[t] for t in kept))
        line += f" Kept exactly by {recipes}: {', '.join(kept)}."
    if rounded:
        line += (" Dequantized exactly to fp32, then rounded a second time by the recipe (XNNPACK"
                 " has no 8-bit grouped or K-quant weight type to keep them): "
                 f"{', '.join(rounded)}.")
    if "Q8_0" in types:
        line += " Q8_0's nearest XNNPACK grid is quant=8da8w (8 bits per row)."
    return line


def write(gguf_path: Path, out: Path) -> int:
    """Keep the raw blocks of every kept-type matrix of `gguf_path` in `out/GRIDS`; how many."""
    from gguf import GGUFReader
    from safetensors.numpy import save_file

    blocks, kinds = {}, {}
    for tensor in GGUFReader(str(gguf_path)).tensors:
        kind = tensor.tensor_type.name
        if kind not in KEPT or sum(int(d) > 1 for d in tensor.shape) != 2:
            continue
        raw = np.ascontiguousarray(tensor.data, dtype=np.uint8).reshape(-1)
        key = grid.digest(kquants.grid(raw, kind).reconstruct())
        blocks[key], kinds[key] = raw, kind
    if blocks:
        save_file(blocks, str(out / GRIDS), metadata={"kinds": json.dumps(kinds, sort_keys=True)})
    return len(blocks)


def load(model_dir: Path) -> dict[str, Any]:
    """digest → the decoded grid (kquants.Grid) of every matrix fetch_model kept; what
    `grid.known` matches linears against."""
    from safetensors import safe_open

    path = model_dir / GRIDS
    if not path.is_file():
        return {}
    with safe_open(str(path), "np") as handle:
        kinds = json.loads(handle.metadata()["kinds"])
        return {key: kquants.grid(handle.get_tensor(key), kind) for key, kind in kinds.items()}
