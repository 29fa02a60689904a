"""The real default model (SmolLM2-135M-Instruct, 8da4w g32, XNNPACK): minutes, EDGERAG_SLOW=1."""

from __future__ import annotations

import pytest

from tests.conftest import copy_repo, repro

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def default_build(tmp_path_factory):
    root = copy_repo(tmp_path_factory.mktemp("default"))
    repro(root)
    return root


def test_default_pte_answers_coherently(default_build):
    from executorch.extension.llm.runner import GenerationConfig
    from transformers import AutoTokenizer

    from pipeline.runtime import text_runner

    lowered = default_build / "data/lowered"
    tokenizer = AutoTokenizer.from_pretrained(default_build / "data/model")
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        tokenize=False, add_generation_prompt=True)
    runner = text_runner(lowered / "llm.pte", lowered / "tokenizer.json")
    pieces: list[str] = []
    runner.generate(prompt, GenerationConfig(max_new_tokens=24, temperature=0.0),
                    pieces.append, None)
    assert "Paris" in "".join(pieces), "".join(pieces)
