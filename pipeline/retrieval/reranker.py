"""An optional cross-encoder reranker as an ExecuTorch `.pte`: the question and one passage go in
together as a BERT sentence pair, one relevance logit comes out.

A cross-encoder reads the question against each candidate's words, which a bi-encoder's single
vector cannot; the price is one forward per candidate at query time, so it rescores only the
fused top `retrieval.rerank_candidates`. It is compiled like the embedder (XNNPACK, dynamic
sequence length) and shipped beside it; no reranker weights ship offline, so it is off unless a
`reranker` source is configured (`conf/reranker/`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer

from pipeline import layout
from pipeline.config import RerankerConfig
from pipeline.errors import BadInput
from pipeline.retrieval.embedder import ATTENTION, to_pte

Forward = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class PairScorer(torch.nn.Module):
    """A sequence-classification BERT with one label → that label's logit per pair."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask,
                          token_type_ids=token_type_ids).logits[:, 0]


def enabled(cfg: RerankerConfig) -> bool:
    return cfg.source is not None


def check(cfg: RerankerConfig) -> None:
    if enabled(cfg) and not 8 <= cfg.max_seq_len <= 512:
        raise BadInput(f"reranker.max_seq_len={cfg.max_seq_len} must be between 8 and 512.")


def load_model(model_dir: Path) -> PairScorer:
    """The fp32 reference: the folder's sequence-classification model, eager, one label."""
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(str(model_dir),
                                                               attn_implementation=ATTENTION)
    if model.config.num_labels != 1:
        raise BadInput(f"{model_dir} scores {model.config.num_labels} labels; a reranker "
                       "gives one relevance logit per pair (a cross-encoder).")
    return PairScorer(model).eval()


def load_tokenizer(path: Path, max_seq_len: int) -> Tokenizer:
    """Pairs cut to `max_seq_len`, the passage losing tokens first (the question is short)."""
    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.enable_truncation(max_seq_len, strategy="only_second")
    tokenizer.no_padding()
    return tokenizer


def compile_reranker(cfg: RerankerConfig, model_dir: Path, out: Path) -> dict[str, Any]:
    """The model folder → `reranker.pte`, `tokenizer.json` (pairs cut at L), `reranker.json`."""
    check(cfg)
    tokenizer = load_tokenizer(model_dir / layout.TOKENIZER, cfg.max_seq_len)
    model = load_model(model_dir)
    example = _inputs(tokenizer.encode("what is a pair?", "A question and a passage."))
    (out / layout.RERANKER_PTE).write_bytes(to_pte(model, example, cfg.max_seq_len))
    tokenizer.save(str(out / layout.TOKENIZER))
    meta = {"max_seq_len": cfg.max_seq_len, "inputs": ["input_ids", "attention_mask",
                                                         "token_type_ids"]}
    (out / layout.RERANKER_META).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return {"pte_bytes": (out / layout.RERANKER_PTE).stat().st_size, **meta}


def _inputs(encoding: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return (torch.tensor([encoding.ids]), torch.tensor([encoding.attention_mask]),
            torch.tensor([encoding.type_ids]))


@dataclass
class Reranker:
    """(question, passages) → one relevance score per passage, higher is more relevant."""

    tokenizer: Tokenizer
    forward: Forward

    def score(self, question: str, passages: list[str]) -> list[float]:
        return [float(self.forward(*_inputs(self.tokenizer.encode(question, passage)))[0])
                for passage in passages]


def load_pte_files(pte: Path, tokenizer: Path) -> Reranker:
    """A reranker `.pte` and its tokenizer wherever they live (an artifact, a release)."""
    from pipeline.runtime import Program

    program = Program(pte)
    return Reranker(Tokenizer.from_file(str(tokenizer)),
                    lambda *inputs: program.forward(*inputs)[0])


def load_reference(model_dir: Path, max_seq_len: int) -> Reranker:
    model = load_model(model_dir)

    def forward(*inputs: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return model(*inputs)

    return Reranker(load_tokenizer(model_dir / layout.TOKENIZER, max_seq_len), forward)
