"""The sentence embedder as an ExecuTorch `.pte`, so the phone embeds queries as the index did.

Mean pooling and L2 normalisation are part of the exported graph, not of the caller: the
runtime on the phone then has nothing to reimplement. Inputs are [1, T] with a dynamic T from
2 to L = `embedder.max_seq_len` (the tokenizer shipped beside the `.pte` truncates to L), so a
short query costs milliseconds instead of a full padded window.
"""

from __future__ import annotations

import json
import multiprocessing
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tokenizers import Tokenizer

from pipeline import layout
from pipeline.config import EmbedderConfig
from pipeline.errors import BadInput
from pipeline.progress import log

MIN_SEQ_LEN = 2  # [CLS] [SEP]: what an empty text encodes to
# Hugging Face's "eager" BERT attention (matmul, additive mask, softmax, matmul) lowers to XNNPACK
# nearly whole. Its "sdpa" path exports as a boolean mask with guards for fully masked rows
# (where, any, logical_not over [heads, T, T]) that run as portable kernels between XNNPACK
# partitions: the same vectors (worst cosine 0.9999999) at half the speed on 254-token chunks.
ATTENTION = "eager"
Forward = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class MeanPooledEncoder(torch.nn.Module):
    """BERT → attention-mask-weighted mean of the last hidden states → unit vector."""

    def __init__(self, bert: torch.nn.Module) -> None:
        super().__init__()
        self.bert = bert

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, p=2.0, dim=1)


class Int8Embedding(torch.nn.Module):
    """A word table stored as int8 rows with one scale each, read by ExecuTorch's embedding_byte.

    The table is most of MiniLM's bytes; XNNPACK does not take embeddings, so the quantized
    kernel library does (the runtime must import `executorch.kernels.quantized`).
    """

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        scales = weight.abs().amax(dim=1).clamp(min=1e-12) / 127.0
        self.register_buffer("weight", torch.round(weight / scales[:, None]).clamp(-128, 127)
                             .to(torch.int8))
        self.register_buffer("scales", scales)

    def forward(self, indices: torch.Tensor) -> torch.Tensor:
        return torch.ops.quantized_decomposed.embedding_byte.dtype(
            self.weight, self.scales, None, -128, 127, indices, dtype=torch.float32)


def _no_quantization(model: MeanPooledEncoder) -> MeanPooledEncoder:
    return model


def _int8_dynamic(model: MeanPooledEncoder) -> MeanPooledEncoder:
    """8da8w: int8 dynamic activations × int8 per-channel weights on linears (XNNPACK qd8)."""
    import executorch.exir.passes._quant_patterns_and_replacements  # noqa: F401 - registers ops
    from torchao.quantization import Int8DynamicActivationIntxWeightConfig, quantize_
    from torchao.quantization.granularity import PerAxis

    quantize_(model, Int8DynamicActivationIntxWeightConfig(
        weight_dtype=torch.int8, weight_granularity=PerAxis(0)))
    words = model.bert.embeddings.word_embeddings
    model.bert.embeddings.word_embeddings = Int8Embedding(words.weight.detach())
    return model


QUANTIZERS: dict[str, Callable[[MeanPooledEncoder], MeanPooledEncoder]] = {
    "none": _no_quantization,
    "8da8w": _int8_dynamic,
}


def check(cfg: EmbedderConfig) -> None:
    if cfg.quantize not in QUANTIZERS:
        raise BadInput(f"embedder.quantize={cfg.quantize!r} is not allowed; choose one of: "
                       f"{', '.join(QUANTIZERS)}.")
    if not 8 <= cfg.max_seq_len <= 512:
        raise BadInput(f"embedder.max_seq_len={cfg.max_seq_len} must be between 8 and 512.")


def load_tokenizer(path: Path, max_seq_len: int) -> Tokenizer:
    """The embedder's tokenizer: truncates to `max_seq_len`, pads a batch to its longest text."""
    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.enable_truncation(max_seq_len)
    tokenizer.enable_padding()
    return tokenizer


def load_encoder(model_dir: Path) -> MeanPooledEncoder:
    """The fp32 reference: the sentence-transformers folder's BertModel, eager."""
    from transformers import BertModel

    bert = BertModel.from_pretrained(str(model_dir), attn_implementation=ATTENTION)
    return MeanPooledEncoder(bert).eval()


def _example(tokenizer: Tokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    encoding = tokenizer.encode("An example sentence to trace the graph with.")
    return torch.tensor([encoding.ids]), torch.tensor([encoding.attention_mask])


def to_pte(model: torch.nn.Module, example: tuple[torch.Tensor, ...], max_seq_len: int) -> bytes:
    """A token-sequence model (every input [1, T], T dynamic up to `max_seq_len`) lowered to
    XNNPACK: the embedder, and the reranker's pair scorer."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    tokens = torch.export.Dim("tokens", min=MIN_SEQ_LEN, max=max_seq_len)
    with torch.no_grad():
        program = torch.export.export(model, example,
                                      dynamic_shapes=tuple({1: tokens} for _ in example),
                                      strict=False)
    log(f"lowering {type(model).__name__} to XNNPACK")
    edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
    return edge.to_executorch().buffer


def compile_embedder(cfg: EmbedderConfig, model_dir: Path, out: Path) -> dict[str, Any]:
    """The model folder → `embedder.pte`, `tokenizer.json` (truncating at L), `embedder.json`."""
    check(cfg)
    tokenizer = load_tokenizer(model_dir / layout.TOKENIZER, cfg.max_seq_len)
    model = QUANTIZERS[cfg.quantize](load_encoder(model_dir))
    example = _example(tokenizer)
    with torch.no_grad():
        dim = int(model(*example).shape[-1])
    (out / layout.EMBEDDER_PTE).write_bytes(to_pte(model, example, cfg.max_seq_len))
    tokenizer.save(str(out / layout.TOKENIZER))
    meta = {"min_seq_len": MIN_SEQ_LEN, "max_seq_len": cfg.max_seq_len, "dim": dim,
            "pooling": "mean", "normalized": True, "quantize": cfg.quantize}
    (out / layout.EMBEDDER_META).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return {"pte_bytes": (out / layout.EMBEDDER_PTE).stat().st_size, **meta}


@dataclass
class Embedder:
    """Texts → unit vectors through either implementation, `batch` texts per forward."""

    tokenizer: Tokenizer
    forward: Forward
    dim: int
    batch: int = 1

    def _forward_batch(self, texts: list[str]) -> np.ndarray:
        encodings = self.tokenizer.encode_batch(texts)
        ids = torch.tensor([e.ids for e in encodings], dtype=torch.long)
        mask = torch.tensor([e.attention_mask for e in encodings], dtype=torch.long)
        return self.forward(ids, mask).detach().numpy()

    def embed(self, texts: Iterable[str]) -> np.ndarray:
        rows, pending = [], []
        for text in texts:
            pending.append(text)
            if len(pending) == self.batch:
                rows.append(self._forward_batch(pending))
                pending = []
        if pending:
            rows.append(self._forward_batch(pending))
        return np.concatenate(rows).astype(np.float32) if rows else np.zeros((0, self.dim),
                                                                               np.float32)


def _meta(embedder_dir: Path) -> dict[str, Any]:
    return json.loads((embedder_dir / layout.EMBEDDER_META).read_text())


def load_pte(embedder_dir: Path) -> Embedder:
    """The shipped artifact, run by the ExecuTorch runtime exactly as the phone will."""
    return load_pte_files(embedder_dir / layout.EMBEDDER_PTE, embedder_dir / layout.TOKENIZER,
                          _meta(embedder_dir)["dim"])


def load_pte_files(pte: Path, tokenizer: Path, dim: int) -> Embedder:
    """An embedder `.pte` and its tokenizer wherever they live (an artifact, a release)."""
    return _runtime_embedder(str(pte), Tokenizer.from_file(str(tokenizer)), dim)


def load_pte_bytes(pte: bytes, tokenizer_json: str, dim: int) -> Embedder:
    """The same from the files' contents, where they arrived over the network (a Dask worker)."""
    return _runtime_embedder(pte, Tokenizer.from_str(tokenizer_json), dim)


def _runtime_embedder(pte: str | bytes, tokenizer: Tokenizer, dim: int) -> Embedder:
    from pipeline.runtime import Program

    program = Program(pte)
    return Embedder(tokenizer, lambda ids, mask: program.forward(ids, mask)[0], dim)


# Fewer texts than this are embedded by this process (a thread per core), not by a pool. The
# pool starts in about 1.1 s (each process imports torch and ExecuTorch's runtime) and the bench
# says it pays from 157 and 271 texts (`pool_pays_from_chunks` in `python -m
# bench.embed_throughput`, AWS CLI chunks); but the stage itself, on the default's 929 pydoc
# chunks, took 25.6 and 26.6 s with the pool against 24.3 and 26.1 s without (`python -m
# stages.build_index`, an empty vector store, EDGERAG_EMBED_WORKERS=2 and 1).
POOL_MIN_TEXTS = 1536


def default_workers(texts: int) -> int:
    """How many processes embed a corpus of `texts` (`EDGERAG_EMBED_WORKERS` overrides): one per
    core this process may use, where 2 processes of one thread embed 1.23× as fast as one of two
    threads (`python -m bench.embed_throughput`), but one below POOL_MIN_TEXTS."""
    if os.environ.get("EDGERAG_EMBED_WORKERS"):
        return int(os.environ["EDGERAG_EMBED_WORKERS"])
    return len(os.sched_getaffinity(0)) if texts >= POOL_MIN_TEXTS else 1


_WORKER: dict[str, Embedder] = {}


def _worker_start(embedder_dir: str) -> None:
    from pipeline import runtime

    runtime.bindings()._unsafe_reset_threadpool(1)  # the processes are the parallelism
    _WORKER["pte"] = load_pte(Path(embedder_dir))


def _worker_embed(texts: list[str]) -> np.ndarray:
    return _WORKER["pte"].embed(texts)


@contextmanager
def pte_pool(embedder_dir: Path, workers: int) -> Iterator[Callable[[list[str]], np.ndarray]]:
    """`embed(texts)` through the `.pte`, spread over `workers` processes, started on the first
    call (a build whose vectors are all stored starts none). The `.pte` embeds one text per call
    and a text's vector does not depend on the thread count, so the vectors are the
    single-process ones (a test compares them)."""
    state: dict[str, Any] = {}

    def embed(texts: list[str]) -> np.ndarray:
        if workers <= 1:
            if "pte" not in state:
                state["pte"] = load_pte(embedder_dir)
            return state["pte"].embed(texts)
        if "pool" not in state:
            state["pool"] = ProcessPoolExecutor(
                workers, mp_context=multiprocessing.get_context("spawn"),  # never fork threads
                initializer=_worker_start, initargs=(str(embedder_dir),))
        size = -(-len(texts) // workers)
        parts = [texts[i:i + size] for i in range(0, len(texts), size)]
        return np.concatenate(list(state["pool"].map(_worker_embed, parts)))

    try:
        yield embed
    finally:
        if "pool" in state:
            state["pool"].shutdown(cancel_futures=True)


def load_reference(model_dir: Path, embedder_dir: Path, batch: int = 16) -> Embedder:
    """The same module in fp32 eager PyTorch, for parity with the `.pte`; batched, since the
    attention mask makes a padded batch compute what single texts would."""
    meta = _meta(embedder_dir)
    model = load_encoder(model_dir)

    def forward(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return model(ids, mask)

    return Embedder(load_tokenizer(model_dir / layout.TOKENIZER, meta["max_seq_len"]), forward,
                    meta["dim"], batch)
