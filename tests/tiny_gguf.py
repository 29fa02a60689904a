"""A tiny Llama GGUF whose linears are real Q4_1 (or Q4_0) blocks, with SmolLM2's own tokenizer
copied in: what `model=local` on a llama.cpp file looks like, small enough for a test's whole
stage graph."""

from __future__ import annotations

from pathlib import Path

import numpy as np

DIM, LAYERS, HEADS, KV_HEADS, FFN, CONTEXT = 64, 2, 4, 2, 128, 128


def write(path: Path, tokenizer_gguf: Path, seed: int = 0, linears: str = "Q4_1",
          layers: int = LAYERS, dim: int = DIM, ffn: int = FFN) -> Path:
    """`linears`: the GGML type of every linear (Q4_1, Q4_0, Q8_0, or Q4_K, whose rows are
    super-blocks of 256: `dim` and `ffn` multiples of it); `layers`: one is enough for the stage
    graph (each costs about 20 s of lowering), two check layer-indexed names."""
    import gguf

    source = gguf.GGUFReader(tokenizer_gguf)
    fields = {name: field for name, field in source.fields.items()
              if name.startswith("tokenizer.")}
    vocab = len(fields["tokenizer.ggml.tokens"].contents())
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(layers)
    writer.add_context_length(CONTEXT)
    writer.add_embedding_length(dim)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(vocab)
    for name, field in fields.items():
        kind = field.types[0]
        sub = field.types[1] if kind == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(name, field.contents(), kind, sub_type=sub)
    rng = np.random.default_rng(seed)

    def tensor(name: str, shape: tuple[int, ...], kind) -> None:
        if kind == gguf.GGMLQuantizationType.Q4_K:  # gguf-py cannot quantize K-quants: pack
            writer.add_tensor(name, q4_k_blocks(rng, shape), raw_dtype=kind)
            return
        data = (rng.standard_normal(shape) * 0.05).astype(np.float32)
        if kind != gguf.GGMLQuantizationType.F32:
            data = gguf.quants.quantize(data, kind)
        writer.add_tensor(name, data, raw_dtype=kind)

    q41, q80, f32 = (gguf.GGMLQuantizationType[linears], gguf.GGMLQuantizationType.Q8_0,
                     gguf.GGMLQuantizationType.F32)
    tensor("token_embd.weight", (vocab, dim), q80)
    tensor("output_norm.weight", (dim,), f32)
    head_dim = dim // HEADS
    for layer in range(layers):
        block = f"blk.{layer}"
        for name, shape in (("attn_q", (dim, dim)), ("attn_k", (KV_HEADS * head_dim, dim)),
                            ("attn_v", (KV_HEADS * head_dim, dim)), ("attn_output", (dim, dim)),
                            ("ffn_gate", (ffn, dim)), ("ffn_up", (ffn, dim)),
                            ("ffn_down", (dim, ffn))):
            tensor(f"{block}.{name}.weight", shape, q41)
        tensor(f"{block}.attn_norm.weight", (dim,), f32)
        tensor(f"{block}.ffn_norm.weight", (dim,), f32)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def q4_k_blocks(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Random Q4_K super-blocks for a (rows, columns) matrix, as GGUF stores them: any bytes are
    valid once the two float16 factors are finite; small positive ones keep the model tame."""
    from pipeline.llm import kquants

    rows, columns = shape
    n = rows * columns // kquants.SUPER
    blocks = rng.integers(0, 256, size=(n, kquants.BLOCK_BYTES["Q4_K"]), dtype=np.uint8)
    for at in (0, 2):  # d, dmin
        factors = (rng.uniform(0.5, 1.5, n) * 2e-3).astype("<f2")
        blocks[:, at:at + 2] = factors.view(np.uint8).reshape(n, 2)
    return blocks.reshape(rows, -1)
