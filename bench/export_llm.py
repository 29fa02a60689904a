"""The ExecuTorch peer: `export_llm` with its stock XNNPACK recipe, run as a subprocess and timed.

The recipe is ExecuTorch's own `examples/models/llama/config/llama_xnnpack.yaml` (8da4w linears,
4-bit embedding in groups of 32, KV cache, custom SDPA, extended XNNPACK ops), with only what
must change for this model overridden: the checkpoint and its params, the runner metadata, the
sequence length, the output path, and the linear group size (its 128 does not divide 576, so 32).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from bench.proc import run_monitored
from pipeline.errors import BadInput

STOCK_RECIPE = "examples/models/llama/config/llama_xnnpack.yaml"
GROUP_SIZE = 32
# The checkpoint's name matters: export_llm treats paths containing "int8" or "8da4w" as
# pre-quantized checkpoints.
CHECKPOINT, PARAMS, CONFIG = "checkpoint_fp32.pth", "params.json", "export_llm.yaml"


def runner_metadata(model_dir: Path) -> dict[str, Any]:
    """BOS/EOS ids as the stock runner reads them from the `.pte`, from the model's own config."""
    config = json.loads((model_dir / "config.json").read_text())
    eos = config["eos_token_id"]
    return {"get_bos_id": config["bos_token_id"],
            "get_eos_ids": eos if isinstance(eos, list) else [eos]}


def prepare_checkpoint(model_dir: Path, work: Path) -> tuple[Path, Path]:
    """data/model (transformers fp32) → the Meta checkpoint + params JSON export_llm reads."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoConfig

    from pipeline.llm import families

    work.mkdir(parents=True, exist_ok=True)
    hf_config = AutoConfig.from_pretrained(model_dir)
    params = families.model_args(hf_config)
    (work / PARAMS).write_text(json.dumps(params, indent=2) + "\n")
    weights = families.to_meta(hf_config, load_file(str(model_dir / "model.safetensors")))
    torch.save(weights, work / CHECKPOINT)
    return work / CHECKPOINT, work / PARAMS


def stock_config(checkpoint: Path, params: Path, metadata: dict[str, Any], out_pte: Path,
                 seq_len: int) -> dict[str, Any]:
    """The LlmConfig export_llm gets: ExecuTorch's stock XNNPACK recipe plus this model's facts."""
    from importlib.util import find_spec

    from omegaconf import OmegaConf

    package = Path(list(find_spec("executorch").submodule_search_locations)[0])
    stock = OmegaConf.load(package / STOCK_RECIPE)
    ours = OmegaConf.create({
        "base": {"model_class": "smollm2", "checkpoint": str(checkpoint), "params": str(params),
                 "metadata": json.dumps(metadata)},
        "model": {"use_kv_cache": True, "use_sdpa_with_kv_cache": True,
                  "enable_dynamic_shape": True},
        "export": {"max_seq_length": seq_len, "max_context_length": seq_len,
                   "output_dir": str(out_pte.parent), "output_name": str(out_pte)},
        "quantization": {"group_size": GROUP_SIZE},
    })
    return OmegaConf.to_container(OmegaConf.merge(stock, ours))


def export(model_dir: Path, work: Path, seq_len: int) -> dict[str, Any]:
    """Run export_llm once; the `.pte`, its size, and the build's wall time and peak RSS.

    The checkpoint conversion is timed apart (edgerag's build figures also start from data/model).
    A `<pte>.build.json` sidecar keeps the build figures for `--export-llm-pte` reuse.
    """
    from omegaconf import OmegaConf

    begin = time.monotonic()
    checkpoint, params = prepare_checkpoint(model_dir, work)
    prepare_s = time.monotonic() - begin
    out_pte = (work / "stock_8da4w.pte").resolve()
    config = stock_config(checkpoint.resolve(), params.resolve(), runner_metadata(model_dir),
                          out_pte, seq_len)
    (work / CONFIG).write_text(OmegaConf.to_yaml(OmegaConf.create(config)))
    log = work / "export_llm.log"
    done = run_monitored([sys.executable, "-m", "executorch.extension.llm.export.export_llm",
                          "--config", str((work / CONFIG).resolve())], cwd=work, log=log)
    if done.returncode != 0 or not out_pte.is_file():
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise BadInput(f"export_llm failed (exit {done.returncode}; log {log}): {tail}")
    build = {"wall_time_s": done.wall_s, "peak_rss_mb": done.peak_rss_mb,
             "checkpoint_prepare_s": round(prepare_s, 2), "config": str(work / CONFIG),
             "log": str(log), "source": "measured: one wall clock around the export_llm process"}
    out_pte.with_suffix(".build.json").write_text(json.dumps(build, indent=2) + "\n")
    return {"artifact": str(out_pte), "bytes": out_pte.stat().st_size, "build": build}


def reuse(pte: Path) -> dict[str, Any]:
    """A stock `.pte` exported earlier; its build figures if its sidecar survived."""
    if not pte.is_file():
        raise BadInput(f"--export-llm-pte {pte} does not exist.")
    sidecar = pte.with_suffix(".build.json")
    build = (json.loads(sidecar.read_text()) if sidecar.is_file()
             else {"wall_time_s": None, "peak_rss_mb": None, "note": f"no {sidecar.name}"})
    return {"artifact": str(pte), "bytes": pte.stat().st_size, "build": build}
