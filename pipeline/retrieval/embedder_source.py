"""The embedder's model folder (BERT weights, config, tokenizer), as fetch_embedder writes it."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer

from pipeline import layout, sources
from pipeline.config import EmbedderConfig, Source


def fetch(cfg: EmbedderConfig, out: Path) -> dict[str, Any]:
    """The embedder's model folder (BERT weights, config, tokenizer) written into `out`: the
    source's folder copied whole, or for `kind: random` a seeded random BERT of the source's
    sizes beside the tokenizer source's tokenizer (the tests' embedder: real tokens, no meaning)."""
    if cfg.source.kind != "random":
        shutil.copytree(sources.materialize(cfg.source), out, dirs_exist_ok=True)
    else:
        _random_bert(cfg.source, sources.materialize(cfg.tokenizer_source), out)
    return {"files": sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())}


def _random_bert(source: Source, tokenizer_dir: Path, out: Path) -> None:
    from transformers import BertConfig, BertModel

    vocab = Tokenizer.from_file(str(tokenizer_dir / layout.TOKENIZER)).get_vocab_size()
    config = BertConfig(vocab_size=vocab, hidden_size=source.dim,
                        num_hidden_layers=source.n_layers, num_attention_heads=source.n_heads,
                        intermediate_size=source.hidden_dim)
    torch.manual_seed(source.seed)
    BertModel(config).eval().save_pretrained(str(out))
    shutil.copy(tokenizer_dir / layout.TOKENIZER, out / layout.TOKENIZER)  # all the .pte reads
