"""Pure arithmetic of the benchmark: one timing sample, medians, edgerag/peer ratios, the table."""

from __future__ import annotations

from statistics import median
from typing import Any

EDGERAG, EXPORT_LLM, LLAMA_CPP = "edgerag", "export_llm", "llama.cpp"
PEERS = (EXPORT_LLM, LLAMA_CPP)

# (key, label, digits): the rows of the table, in order.
ROWS = (
    ("decode_tok_s", "decode tok/s", 1),
    ("prefill_tok_s", "prefill tok/s (time to first token)", 1),
    ("ppl", "perplexity", 3),
    ("ppl_delta_pct", "perplexity delta vs fp32 (%)", 2),
    ("size_mb", "size (MB)", 1),
    ("build_s", "build time (s)", 1),
    ("build_peak_rss_mb", "build peak RSS (MB)", 0),
)


def timing_sample(begin: float, first_token: float, end: float, prompt_tokens: int,
                  generated: int) -> dict[str, float | None]:
    """One generation on the outer clock: prompt in at `begin`, first token out, last token out.

    Prefill is the prompt over the time to first token; decode is the tokens after the first
    over the time after the first.
    """
    ttft, after = first_token - begin, end - first_token
    return {
        "ttft_s": round(ttft, 5),
        "total_s": round(end - begin, 5),
        "prompt_tokens": prompt_tokens,
        "generated_tokens": generated,
        "prefill_tok_s": round(prompt_tokens / ttft, 2) if ttft > 0 else None,
        "decode_tok_s": round((generated - 1) / after, 2) if generated > 1 and after > 0
        else None,
    }


def medians(samples: list[dict[str, Any]]) -> dict[str, float]:
    """The median of every numeric key the samples share (missing values ignored)."""
    keys = set.intersection(*(set(s) for s in samples)) if samples else set()
    out = {}
    for key in sorted(keys):
        values = [s[key] for s in samples
                  if isinstance(s[key], int | float) and not isinstance(s[key], bool)]
        if values:
            out[key] = round(median(values), 4)
    return out


def ratio(ours: float | None, theirs: float | None) -> float | None:
    """ours / theirs, or None when either side is missing or the peer's value is not positive."""
    if ours is None or theirs is None or theirs <= 0:
        return None
    return round(ours / theirs, 3)


def headline(system: dict[str, Any], reference_ppl: float | None) -> dict[str, float | None]:
    """The table's figures for one system's results."""
    speed = system.get("speed", {}).get("median", {})
    ppl = system.get("quality", {}).get("ppl")
    build = system.get("build") or {}
    delta = (round(100.0 * (ppl - reference_ppl) / reference_ppl, 3)
             if ppl is not None and reference_ppl else None)
    size = system.get("bytes")
    return {
        "decode_tok_s": speed.get("decode_tok_s"),
        "prefill_tok_s": speed.get("prefill_tok_s"),
        "ppl": ppl,
        "ppl_delta_pct": delta,
        "size_mb": round(size / 1e6, 2) if size else None,
        "build_s": build.get("wall_time_s"),
        "build_peak_rss_mb": build.get("peak_rss_mb"),
    }


def ratios(figures: dict[str, dict[str, float | None]]) -> dict[str, dict[str, float | None]]:
    """For every edgerag column and every peer present: edgerag/peer, metric by metric.

    A ratio of perplexity deltas is only given when the peer's delta is positive (a ratio
    against a delta at or below zero says nothing).
    """
    ours = [name for name in figures if name.startswith(EDGERAG)]
    peers = [name for name in PEERS if name in figures]
    return {f"{a}/{b}": {key: ratio(figures[a][key], figures[b][key]) for key, _, _ in ROWS}
            for a in ours for b in peers}


def _cell(value: float | None, digits: int) -> str:
    if value is None:
        return "—"
    return f"{value:,.{digits}f}" if digits else f"{value:,.0f}"


def markdown_table(figures: dict[str, dict[str, float | None]],
                   pair_ratios: dict[str, dict[str, float | None]]) -> str:
    """metric | each system | each edgerag/peer ratio."""
    systems, pairs = list(figures), list(pair_ratios)
    lines = ["| metric | " + " | ".join(systems + pairs) + " |",
             "|---|" + "---:|" * (len(systems) + len(pairs))]
    for key, label, digits in ROWS:
        cells = [_cell(figures[name][key], digits) for name in systems]
        cells += [_cell(pair_ratios[pair][key], 2) for pair in pairs]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def long_prompt_figures(systems: dict[str, dict[str, Any]]) -> dict[int, dict[str, dict]]:
    """{prompt tokens: {system: {"ttft_s", "decode_tok_s"}}} from each system's `long_prompts`."""
    table: dict[int, dict[str, dict]] = {}
    for name, system in systems.items():
        for length, run in (system.get("long_prompts") or {}).items():
            median_of = run["median"]
            table.setdefault(int(length), {})[name] = {
                "ttft_s": median_of.get("ttft_s"), "decode_tok_s": median_of.get("decode_tok_s")}
    return dict(sorted(table.items()))


def long_prompt_table(figures: dict[int, dict[str, dict]]) -> str:
    """prompt tokens | each system's time to first token and decode | edgerag's decode against
    each peer's | edgerag's decode against its own at the shortest prompt (how far it falls)."""
    if not figures:
        return ""
    systems = list(next(iter(figures.values())))
    ours = [name for name in systems if name.startswith(EDGERAG)]
    peers = [name for name in PEERS if name in systems]
    shortest = next(iter(figures.values()))
    header = ["prompt tokens"]
    header += [f"{name} {what}" for name in systems for what in ("TTFT (s)", "decode tok/s")]
    header += [f"{a}/{b} decode" for a in ours for b in peers]
    header += [f"{a} decode vs {next(iter(figures))}-token prompt" for a in ours]
    lines = ["| " + " | ".join(header) + " |", "|" + "---:|" * len(header)]
    for length, row in figures.items():
        cells = [f"{length:,}"]
        for name in systems:
            cells += [_cell(row.get(name, {}).get("ttft_s"), 3),
                      _cell(row.get(name, {}).get("decode_tok_s"), 1)]
        cells += [_cell(ratio(row.get(a, {}).get("decode_tok_s"),
                              row.get(b, {}).get("decode_tok_s")), 2) for a in ours for b in peers]
        cells += [_cell(ratio(row.get(a, {}).get("decode_tok_s"),
                              shortest.get(a, {}).get("decode_tok_s")), 2) for a in ours]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
