"""The sweep's trade-off: perplexity delta against `.pte` size, decode speed as colour.

A job is on the Pareto front when no other job is at least as good on both axes and better on
one: whatever the perplexity budget, the run worth promoting is on the front.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from pipeline import artifacts

SIZE, DELTA, SPEED = "llm.pte_bytes", "llm.ppl_delta_pct", "llm.decode_tok_s"
PLOT, DATA = "pareto.png", "pareto.json"


def front(points: list[tuple[float, float]]) -> list[bool]:
    """For each (x, y), whether no other point is ≤ on both and < on one (both minimized)."""
    return [not any(o[0] <= p[0] and o[1] <= p[1] and o != p for o in points) for p in points]


def _number(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def points(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The plot's data, one entry per job that has both a size and a perplexity delta."""
    usable = [r for r in rows if r.get("status") == "ok"
              and _number(r.get(SIZE)) is not None and _number(r.get(DELTA)) is not None]
    flags = front([(float(r[SIZE]), float(r[DELTA])) for r in usable])
    return [{"job": r["job"], "experiment": r.get("experiment", ""), "quant": r.get("quant", ""),
             "pte_mb": round(float(r[SIZE]) / 1e6, 4), "ppl_delta_pct": float(r[DELTA]),
             "decode_tok_s": _number(r.get(SPEED)), "pareto": flag}
            for r, flag in zip(usable, flags, strict=True)]


def plot(data: list[dict[str, Any]]) -> Any:
    """A matplotlib Figure (no pyplot state): the jobs, coloured by speed, the front marked."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7.5, 4.8), layout="constrained")
    axes = figure.add_subplot()
    axes.set_xlabel(".pte size (MB)")
    axes.set_ylabel("perplexity delta vs fp32 (%)")
    axes.set_title("Sweep: quality vs size (colour: decode tok/s)")
    if not data:
        axes.text(0.5, 0.5, "no successful job", ha="center", transform=axes.transAxes)
        return figure
    speeds = [d["decode_tok_s"] for d in data]
    coloured = all(s is not None for s in speeds)
    dots = axes.scatter([d["pte_mb"] for d in data], [d["ppl_delta_pct"] for d in data],
                        c=speeds if coloured else "grey", cmap="viridis" if coloured else None,
                        s=45, zorder=3)
    if coloured:
        figure.colorbar(dots, ax=axes, label="decode tok/s")
    best = sorted((d for d in data if d["pareto"]), key=lambda d: (d["pte_mb"], d["ppl_delta_pct"]))
    xs, ys = [d["pte_mb"] for d in best], [d["ppl_delta_pct"] for d in best]
    axes.step(xs, ys, where="post", color="tab:red", linewidth=1, zorder=2)
    axes.scatter(xs, ys, facecolors="none", edgecolors="tab:red", s=140, zorder=4,
                 label="Pareto front (min size, min delta)")
    for d in best:
        axes.annotate(f"{d['quant']} #{d['job']}", (d["pte_mb"], d["ppl_delta_pct"]),
                      textcoords="offset points", xytext=(7, 6), fontsize=8)
    axes.legend(loc="best", fontsize=8)
    return figure


def _save_png(figure: Any, path: Path) -> None:
    """savefig to a temporary sibling, then rename: no half-written plot under the real name."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        figure.savefig(tmp, dpi=120)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write(rows: list[dict[str, Any]], folder: Path) -> list[dict[str, Any]]:
    """Write pareto.json (for `dvc plots show`) and pareto.png; return the plotted data."""
    data = points(rows)
    artifacts.atomic_write_text(folder / DATA, json.dumps(data, indent=2) + "\n")
    _save_png(plot(data), folder / PLOT)
    return data
