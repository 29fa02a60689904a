"""Calibrate and quantize the exported program with the scheme named by `quant.method`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline import layout
from pipeline.config import Config
from pipeline.errors import BadInput
from pipeline.llm import calibrate, checks, export, schemes
from pipeline.progress import log
from pipeline.splits import read_jsonl


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
    texts = [record["text"] for record in read_jsonl(split_dir / layout.CALIBRATION_SPLIT)]
    samples = calibrate.token_samples(texts, model_dir, cfg.calibration)
    if len(samples) < cfg.calibration.num_samples:
        raise BadInput(
            f"the calibration split holds only {len(samples)} windows of "
            f"{cfg.calibration.seq_len} tokens; lower calibration.num_samples."
        )
    program = export.load_program(export_dir / layout.PROGRAM)
    stats = scheme.calibrate(cfg.quant, program, samples, model_dir=model_dir)
    return {"uses_calibration": True, "samples": len(samples), **scheme.save(stats, samples, out)}


def run(cfg: Config, export_dir: Path, calibration_dir: Path, out: Path,
        grids: dict | None = None) -> dict[str, Any]:
    """`grids`: the source's Q4_K grids by weight digest (gguf_grids.load), for source_grid=gguf."""
    params, metadata = export.load_interface(export_dir)
    llm = checks.llm_config(cfg.model.executorch)
    program = export.load_program(export_dir / layout.PROGRAM)
    scheme = schemes.scheme(cfg.quant)
    stats = scheme.load(calibration_dir)
    if scheme.uses_calibration(cfg.quant) and stats is None:
        raise BadInput(f"quant={cfg.quant.name} needs calibration statistics; rerun calibrate.")
    log(f"quantizing with {cfg.quant.name} ({cfg.quant.method})")
    extra = {"grids": grids or {}} if cfg.quant.source_grid == schemes.GGUF else {}
    quantized = scheme.quantize(cfg.quant, program, params, llm, metadata, stats, **extra)
    export.save_program(quantized, out / layout.PROGRAM)
    export.save_interface(out, params, metadata)
    return {"scheme": cfg.quant.name}
