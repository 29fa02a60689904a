"""A GGUF's K-quant, Q5_0 and Q8_0 blocks decoded into their grids, exactly (issue 43 item 2).

Gemma 3 270M's Q4_K_M file mixes all four: Q4_K (attention output, most FFN down), Q6_K (the
other FFN down), Q5_0 (q, k, v, gate, up) and Q8_0 (the embedding, some v).

Each type is a grid of small integer codes with a float step (and for Q4_K an offset) per
group, which is what a 4- or 8-bit linear can carry without a second rounding:

- Q4_K, super-blocks of 256: two float16 factors `d` and `dmin`, then eight 6-bit scales and
  eight 6-bit minimums packed in 12 bytes, then 256 4-bit codes. Group g (32 weights) is
  `w = (d*scale_g)*q - (dmin*min_g)`, q in 0..15: a per-32 step and offset, the Q4_1 form.
- Q6_K, super-blocks of 256: 256 6-bit codes (low 4 bits in `ql`, high 2 in `qh`), sixteen
  int8 scales, one float16 `d`. Group g (16 weights) is `w = (d*scale_g)*(q - 32)`: symmetric
  6-bit codes, -32..31, per-16 step.
- Q5_0, blocks of 32: one float16 `d`, 32 high bits (little-endian), 16 bytes of low nibbles
  (weights j and j+16 share byte j): `w = d*(q - 16)`, symmetric 5-bit codes -16..15.
- Q8_0, blocks of 32: one float16 `d`, then 32 int8 codes: `w = d*q`.

`grid(...)` returns (codes, steps, offsets) per group, and `reconstruct` the float32 weights
computed in the order llama.cpp's own dequantization does (step first, then code), so a test
can hold the two bit for bit against gguf-py's `dequantize`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SUPER = 256  # weights per K-quant super-block
BLOCK_BYTES = {"Q4_K": 2 + 2 + 12 + SUPER // 2, "Q6_K": SUPER // 2 + SUPER // 4 + 16 + 2,
               "Q5_0": 2 + 4 + 16, "Q8_0": 2 + 32}
GROUP = {"Q4_K": 32, "Q6_K": 16, "Q5_0": 32, "Q8_0": 32}  # weights per step


@dataclass(frozen=True)
class Grid:
    """Codes (one row of `GROUP[kind]` per group), a float32 step per group, and an offset per
    group (zeros for the symmetric types): `w = step * code + offset`."""

    kind: str
    codes: np.ndarray  # int8, (groups, group size)
    steps: np.ndarray  # float32, (groups, 1)
    offsets: np.ndarray  # float32, (groups, 1)

    def reconstruct(self) -> np.ndarray:
        """The weights, flat, in float32: `step * code`, then `+ offset` for Q4_K."""
        weights = self.steps * self.codes.astype(np.float32)
        if self.kind == "Q4_K":
            weights = weights + self.offsets
        return weights.reshape(-1)


def _f16(raw: np.ndarray) -> np.ndarray:
    """Little-endian float16 from two bytes per row, as float32 (exact)."""
    return np.ascontiguousarray(raw).view("<f2").astype(np.float32)


def _blocks(data: np.ndarray, kind: str) -> np.ndarray:
    data = np.ascontiguousarray(data, dtype=np.uint8).reshape(-1)
    if data.size % BLOCK_BYTES[kind]:
        raise ValueError(f"{data.size} bytes is not a whole number of {kind} blocks")
    return data.reshape(-1, BLOCK_BYTES[kind])


def _q4_k_scales(packed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The eight 6-bit scales and minimums of each super-block from its 12 packed bytes:
    bytes 0-3 hold scales 0-3 (low 6 bits) and the top 2 bits of scales 4-7; bytes 4-7 the
    same for the minimums; bytes 8-11 the low 4 bits of scales 4-7 (low nibble) and of
    minimums 4-7 (high nibble)."""
    first, second, low = packed[:, 0:4], packed[:, 4:8], packed[:, 8:12]
    scales = np.concatenate([first & 63, (low & 15) | ((first >> 6) << 4)], axis=1)
    mins = np.concatenate([second & 63, (low >> 4) | ((second >> 6) << 4)], axis=1)
    return scales, mins


def _q4_k(blocks: np.ndarray) -> Grid:
    d, dmin = _f16(blocks[:, 0:2]), _f16(blocks[:, 2:4])
    scales, mins = _q4_k_scales(blocks[:, 4:16])
    qs = blocks[:, 16:].reshape(-1, 4, 32)  # four runs of 32 bytes: groups 2i (low), 2i+1 (high)
    codes = np.stack([qs & 15, qs >> 4], axis=2).reshape(-1, 32)
    steps = (d * scales.astype(np.float32)).reshape(-1, 1)
    offsets = -(dmin * mins.astype(np.float32)).reshape(-1, 1)
    return Grid("Q4_K", codes.astype(np.int8), steps, offsets)


def _q6_k(blocks: np.ndarray) -> Grid:
    ql = blocks[:, :128].reshape(-1, 2, 64)  # per half of 128 weights: 64 bytes of low nibbles
    qh = blocks[:, 128:192].reshape(-1, 2, 32)  # and 32 bytes of 2-bit highs, four per byte
    scales = blocks[:, 192:208].view(np.int8).astype(np.float32)
    d = _f16(blocks[:, 208:210])
    # Within a half, weight 32*j + l takes the low or high nibble of ql[l + 32*(j % 2)] (high
    # for j >= 2) and bits 2j..2j+1 of qh[l].
    low = np.stack([ql[:, :, :32] & 15, ql[:, :, 32:] & 15, ql[:, :, :32] >> 4,
                    ql[:, :, 32:] >> 4], axis=2)
    high = np.stack([(qh >> shift) & 3 for shift in (0, 2, 4, 6)], axis=2)
    codes = (low | (high << 4)).astype(np.int16) - 32
    steps = (d * scales).reshape(-1, 1)
    return Grid("Q6_K", codes.reshape(-1, 16).astype(np.int8), steps,
                np.zeros_like(steps))


def _q5_0(blocks: np.ndarray) -> Grid:
    steps = _f16(blocks[:, 0:2]).reshape(-1, 1)
    high = np.ascontiguousarray(blocks[:, 2:6]).view("<u4").reshape(-1, 1)
    bits = ((high >> np.arange(32, dtype=np.uint32)) & 1).astype(np.uint8)
    qs = blocks[:, 6:22]
    low = np.concatenate([qs & 15, qs >> 4], axis=1)
    codes = (low | (bits << 4)).astype(np.int16) - 16
    return Grid("Q5_0", codes.astype(np.int8), steps, np.zeros_like(steps))


def _q8_0(blocks: np.ndarray) -> Grid:
    steps = _f16(blocks[:, 0:2]).reshape(-1, 1)
    return Grid("Q8_0", blocks[:, 2:].view(np.int8).copy(), steps, np.zeros_like(steps))


DECODERS = {"Q4_K": _q4_k, "Q6_K": _q6_k, "Q5_0": _q5_0, "Q8_0": _q8_0}


def grid(data: np.ndarray, kind: str) -> Grid:
    """The grid of a tensor's raw GGUF bytes of type `kind` (Q4_K, Q6_K, Q5_0 or Q8_0)."""
    if kind not in DECODERS:
        raise ValueError(f"{kind} is not a type this module decodes: {', '.join(DECODERS)}")
    return DECODERS[kind](_blocks(data, kind))
