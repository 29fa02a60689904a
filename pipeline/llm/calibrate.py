"""Calibration samples from the calibration split, and the statistics a scheme keeps from them."""

from __future__ import annotations

from pathlib import Path

import torch

from pipeline.config import CalibrationConfig


def token_samples(texts: list[str], tokenizer_dir: Path, cfg: CalibrationConfig) -> list:
    """`num_samples` windows of `seq_len` tokens, consecutive over the joined calibration text."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    ids: list[int] = []
    needed = cfg.num_samples * cfg.seq_len
    for text in texts:
        ids.extend(tokenizer(text + "\n\n", add_special_tokens=False)["input_ids"])
        if len(ids) >= needed:
            break
    windows = [ids[i : i + cfg.seq_len] for i in range(0, needed, cfg.seq_len)]
    return [torch.tensor(w, dtype=torch.long) for w in windows if len(w) == cfg.seq_len]
