"""params.yaml read, typed and checked: what every stage starts with (`load`) and what
`edgerag configure` and sweeps check a composed config with (`validate`).

A bad value fails before any work with one sentence naming the key, the value and what is
allowed. Above the schema (`pipeline/config.py`), the LLM sections' rules
(`pipeline/llm/checks.py`) and the strict-params guard (`pipeline/declared.py`), which it calls.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, MissingMandatoryValue, ValidationError

from pipeline import declared
from pipeline.config import (
    CALIBRATION_SOURCES,
    EVAL_MINIMUMS,
    PARAMS_FILE,
    PROGRAM_PPL,
    SOURCE_KINDS,
    Config,
    one_of,
)
from pipeline.errors import BadInput
from pipeline.llm import checks


def _allowed_keys(path: str) -> list[str]:
    node: Any = Config
    for part in path.split(".")[:-1]:
        hints = {f.name: f for f in dataclasses.fields(node)}
        if part not in hints:
            return []
        default = hints[part].default_factory  # type: ignore[misc]
        node = type(default()) if callable(default) else None
        if node is None or not dataclasses.is_dataclass(node):
            return []
    return [f.name for f in dataclasses.fields(node)]


def _structured(raw: DictConfig) -> DictConfig:
    """Merge raw values into the schema, translating OmegaConf's errors into one sentence."""
    missing = sorted(OmegaConf.missing_keys(raw))
    if missing:
        raise BadInput(f"{missing[0]} must be set (it has no default).")
    try:
        merged = OmegaConf.merge(OmegaConf.structured(Config), raw)
        OmegaConf.to_container(merged, throw_on_missing=True)
    except ConfigKeyError as error:
        key = error.full_key or str(error.key)
        allowed = ", ".join(_allowed_keys(key)) or "none"
        raise BadInput(f"{key} is not a known setting; allowed keys there: {allowed}.") from None
    except MissingMandatoryValue as error:
        raise BadInput(f"{error.full_key} must be set (it has no default).") from None
    except ValidationError as error:
        raise BadInput(
            f"{error.full_key}={error.value!r} is not valid: {str(error.msg).splitlines()[0]}."
        ) from None
    return merged


def _check_semantics(cfg: Config, executorch: bool) -> None:
    one_of("model.source.kind", cfg.model.source.kind, SOURCE_KINDS)
    if cfg.model.source.kind == "random" and cfg.model.tokenizer_source is None:
        raise BadInput("model.tokenizer_source must be set when model.source.kind=random.")
    one_of("embedder.source.kind", cfg.embedder.source.kind, SOURCE_KINDS)
    if cfg.embedder.source.kind == "random" and cfg.embedder.tokenizer_source is None:
        raise BadInput("embedder.tokenizer_source must be set when embedder.source.kind=random.")
    one_of("calibration.source", cfg.calibration.source, CALIBRATION_SOURCES)
    if not 0.0 < cfg.calibration.eval_fraction < 1.0:
        raise BadInput(
            f"calibration.eval_fraction={cfg.calibration.eval_fraction} must be between 0 and 1."
        )
    if cfg.calibration.num_samples < 1 or cfg.calibration.seq_len < 2:
        raise BadInput("calibration.num_samples must be ≥ 1 and calibration.seq_len ≥ 2.")
    one_of("eval.program_ppl", cfg.eval.program_ppl, PROGRAM_PPL)
    for key, least in EVAL_MINIMUMS.items():  # here, not in evaluate_llm after the LLM stages
        if getattr(cfg.eval, key) < least:
            raise BadInput(f"eval.{key}={getattr(cfg.eval, key)} must be at least {least}.")
    checks.check(cfg, executorch)


def validate(raw: DictConfig | dict, executorch: bool = True) -> Config:
    """Return the typed config, or raise BadInput naming the first bad key. `executorch=False`
    leaves `model.executorch` to the LLM stages, which check it as they read it."""
    if not isinstance(raw, DictConfig):
        raw = OmegaConf.create(raw)
    merged = _structured(raw)
    cfg: Config = OmegaConf.to_object(merged)  # type: ignore[assignment]
    _check_semantics(cfg, executorch)
    return cfg


def _read_params(path: Path) -> DictConfig:
    """params.yaml as a mapping, or one sentence naming the line that is not YAML."""
    import yaml

    try:
        raw = OmegaConf.load(path)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise BadInput(f"{path} is not valid YAML{where}; regenerate it with `edgerag configure`."
                       ) from None
    except UnicodeDecodeError:
        raise BadInput(f"{path} is not UTF-8 text; regenerate it with `edgerag configure`."
                       ) from None
    if not isinstance(raw, DictConfig):
        raise BadInput(f"{path} holds a {type(raw).__name__.removesuffix('Config').lower()}, "
                       "not a mapping of settings; regenerate it with `edgerag configure`.")
    return raw


def load(path: str | Path = PARAMS_FILE) -> Config:
    """params.yaml for a stage. ExecuTorch's LlmConfig is checked where it is read
    (`checks.llm_config`), so a stage that never touches the LLM does not import ExecuTorch
    (2.5 s of torch, torchao and dynamo per stage)."""
    path = Path(path)
    if not path.is_file():
        raise BadInput(f"{path} does not exist; run `edgerag configure` first.")
    cfg = validate(_read_params(path), executorch=False)
    stage = declared.running_stage()
    if stage is not None and declared.strict():
        declared.restrict(cfg, stage, declared.params(stage))
    return cfg
