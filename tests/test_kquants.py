"""K-quant, Q5_0 and Q8_0 grids kept exactly: for every tensor type, the grid decoded from raw
GGUF blocks reconstructs gguf-py's own dequantization bit for bit (issue 43 item 2). The blocks
are random bytes packed here (any bytes are a valid block once its float16 factors are
finite), so every code, scale and minimum value is exercised; gguf-py cannot write K-quants."""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType
from gguf.quants import dequantize

from pipeline.llm import kquants

TYPES = {"Q4_K": GGMLQuantizationType.Q4_K, "Q6_K": GGMLQuantizationType.Q6_K,
         "Q5_0": GGMLQuantizationType.Q5_0, "Q8_0": GGMLQuantizationType.Q8_0}
FACTORS = {"Q4_K": (0, 2), "Q6_K": (208,), "Q5_0": (0,), "Q8_0": (0,)}  # float16 offsets


def _random_blocks(kind: str, n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, size=(n, kquants.BLOCK_BYTES[kind]), dtype=np.uint8)
    for at in FACTORS[kind]:  # finite, normal-range factors, either sign
        factors = (rng.standard_normal(n) * 0.01).astype("<f2")
        blocks[:, at:at + 2] = factors.view(np.uint8).reshape(n, 2)
    return blocks


@pytest.mark.parametrize("kind", sorted(TYPES))
def test_the_decoded_grid_reconstructs_gguf_py_bit_for_bit(kind):
    blocks = _random_blocks(kind, 64)
    grid = kquants.grid(blocks, kind)
    theirs = dequantize(blocks.reshape(-1), TYPES[kind]).reshape(-1)
    ours = grid.reconstruct()
    assert ours.dtype == np.float32 and ours.shape == theirs.shape
    assert np.array_equal(ours.view(np.uint32), theirs.astype(np.float32).view(np.uint32))
    group = kquants.GROUP[kind]
    assert grid.codes.shape[1] == group and len(grid.steps) == ours.size // group


def test_codes_stay_in_each_types_range():
    assert {int(c) for c in np.unique(kquants.grid(_random_blocks("Q4_K", 32), "Q4_K").codes)
            } == set(range(16))
    six = kquants.grid(_random_blocks("Q6_K", 32), "Q6_K").codes
    assert six.min() == -32 and six.max() == 31
    assert not kquants.grid(_random_blocks("Q6_K", 4), "Q6_K").offsets.any()
    five = kquants.grid(_random_blocks("Q5_0", 32), "Q5_0").codes
    assert five.min() == -16 and five.max() == 15


def test_a_torn_tensor_is_refused():
    with pytest.raises(ValueError, match="not a whole number of Q4_K blocks"):
        kquants.grid(np.zeros(143, np.uint8), "Q4_K")
