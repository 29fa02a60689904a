"""Calibrate and quantize the exported program with the scheme named by `quant.method`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from pipeline.config import Config
from pipeline.errors import BadInput
from pipeline.llm import calibrate, checks, export, schemes
from pipeline.progress import log
from pipeline.splits import CALIBRATION, read_jsonl

STATS = "stats.pt"
PLAN = "plan.json"  # mixed precision: which tensors stay at 8 bits, and why


def run_calibration(cfg: Config, export_dir: Path, split_dir: Path, model_dir: Path,
                    out: Path) -> dict[str, Any]:
    scheme = schemes.scheme(cfg.quant)
    if not scheme.uses_calibration(cfg.quant):
        log(f"quant={cfg.quant.name} (method {cfg.quant.method}) uses no calibration data; "
            "nothing to observe")
        return {"uses_calibration": False, "samples": 0}
    llm = checks.llm_config(cfg.model.executorch)
    if cfg.calibration.seq_len >= llm.export.max_seq_length:
        raise BadInput(
            f"calibration.seq_len={cfg.calibration.seq_len} must be below the model's "
            f"max_seq_length {llm.export.max_seq_length}."
        )
    texts = [record["text"] for record in read_jsonl(split_dir / CALIBRATION)]
    samples = calibrate.token_samples(texts, model_dir, cfg.calibration)
    if len(samples) < cfg.calibration.num_samples:
        raise BadInput(
            f"the calibration split holds only {len(samples)} windows of "
            f"{cfg.calibration.seq_len} tokens; lower calibration.num_samples."
        )
    program = export.load_program(export_dir / export.PROGRAM)
    stats = scheme.calibrate(cfg.quant, program, samples, model_dir=model_dir)
    if cfg.quant.method == "torchao":  # a plan: 8-bit layers, fp32 head channels
        (out / PLAN).write_text(json.dumps(stats, indent=2, sort_keys=True) + "\n")
        layers = stats.get("layers", {})
        return {"uses_calibration": True, "samples": len(samples), "plan": PLAN,
                "estimated_bytes": stats.get("estimated_bytes"),
                "head_outliers": stats.get("head_outliers", []),
                "eight_bit": sorted(n for n, c in layers.items() if c["bits"] == 8)}
    torch.save(stats, out / STATS)
    return {"uses_calibration": True, "samples": len(samples),
            "tokens": sum(len(s) for s in samples), "observers": len(stats)}


def run(cfg: Config, export_dir: Path, calibration_dir: Path, out: Path) -> dict[str, Any]:
    params, metadata = export.load_interface(export_dir)
    llm = checks.llm_config(cfg.model.executorch)
    program = export.load_program(export_dir / export.PROGRAM)
    stats_file = calibration_dir / STATS
    stats = torch.load(stats_file, weights_only=True) if stats_file.exists() else None
    if (calibration_dir / PLAN).exists():
        stats = json.loads((calibration_dir / PLAN).read_text())
    scheme = schemes.scheme(cfg.quant)
    if scheme.uses_calibration(cfg.quant) and stats is None:
        raise BadInput(f"quant={cfg.quant.name} needs calibration statistics; rerun calibrate.")
    log(f"quantizing with {cfg.quant.name} ({cfg.quant.method})")
    quantized = scheme.quantize(cfg.quant, program, params, llm, metadata, stats)
    export.save_program(quantized, out / export.PROGRAM)
    export.save_interface(out, params, metadata)
    return {"scheme": cfg.quant.name}
