"""Evaluation through the shipped artifact: runtime perplexity and lm-eval on the tiny model."""

from __future__ import annotations

import pytest

from pipeline.evaluation import lm_eval_adapter, perplexity, scorers, tasks

TEXT = ("The with statement is used to wrap the execution of a block with methods defined "
        "by a context manager. This allows common try except finally usage patterns to be "
        "encapsulated for convenient reuse.")


@pytest.fixture(scope="module")
def windows(tiny_tokenizer):
    tokenizer, _ = tiny_tokenizer
    ids = perplexity.eval_tokens([TEXT, TEXT.upper()], tokenizer, 120)
    return perplexity.windows(ids, 40)


@pytest.fixture(scope="module")
def reference(tiny_llm):
    hf, *_ = tiny_llm
    return scorers.EagerScorer(hf, 128)


def test_fp32_pte_perplexity_equals_eager(tiny_ptes, reference, windows):
    result = perplexity.score(scorers.RuntimeScorer(tiny_ptes["fp32"]), reference, windows)
    assert result["tokens"] == sum(len(w) - 1 for w in windows)
    assert abs(result["ppl"] - result["ppl_reference"]) / result["ppl_reference"] < 1e-3


def test_quantized_pte_perplexity_differs(tiny_ptes, reference, windows):
    result = perplexity.score(scorers.RuntimeScorer(tiny_ptes["8da4w"]), reference, windows)
    assert result["ppl_delta_pct"] != 0.0
    assert abs(result["ppl_delta_pct"]) < 50


def test_long_context_is_prefilled_in_chunks(tiny_ptes, reference):
    """Scoring past max_seq_len - 1 context tokens must chunk the prefill and stay exact."""
    pte = scorers.RuntimeScorer(tiny_ptes["fp32"])
    ids = [(7 * i) % 500 + 3 for i in range(pte.max_context_len)]
    start = len(ids) - 3
    ours = scorers.target_logprobs(pte, ids, start)
    theirs = scorers.target_logprobs(reference, ids, start)
    assert (ours - theirs).abs().max() < 1e-3


def _reference_texts():
    from pydoc_data.topics import topics

    return [topics[name] for name in sorted(topics)[:30]]


class _Request:
    def __init__(self, *args):
        self.args = args


def test_lm_loglikelihoods_match_eager(tiny_ptes, reference, tiny_tokenizer):
    tokenizer, _ = tiny_tokenizer
    requests = [_Request("The with statement is used to", " wrap"),
                _Request("A context manager", " defines methods"),
                _Request("", "Python")]
    pte_lm = lm_eval_adapter.ScorerLM(scorers.RuntimeScorer(tiny_ptes["fp32"]), tokenizer)
    ref_lm = lm_eval_adapter.ScorerLM(reference, tokenizer)
    for (ours, greedy), (theirs, greedy_ref) in zip(pte_lm.loglikelihood(requests),
                                                    ref_lm.loglikelihood(requests), strict=True):
        assert ours < 0 and abs(ours - theirs) < 1e-3 and greedy == greedy_ref
    rolling = pte_lm.loglikelihood_rolling([_Request(TEXT)])[0]
    assert abs(rolling - ref_lm.loglikelihood_rolling([_Request(TEXT)])[0]) < 1e-2
    generated = pte_lm.generate_until([_Request("The with", {"until": ["\n"],
                                                             "max_gen_toks": 5})])
    assert generated == ref_lm.generate_until([_Request("The with", {"until": ["\n"],
                                                                     "max_gen_toks": 5})])


def test_offline_yaml_tasks_load_and_score(tmp_path, reference, tiny_tokenizer, monkeypatch):
    from pipeline.evaluation.evaluate import _lm_eval

    tokenizer, _ = tiny_tokenizer
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tasks").mkdir()
    counts = tasks.write(tmp_path / "tasks", _reference_texts(), limit=4, seed=0,
                         data_prefix="tasks")
    assert counts["edgerag_stdlib_docstrings"] == 4
    accuracy = _lm_eval(reference, tokenizer, tmp_path / "tasks", limit=4)
    assert set(accuracy) == {"edgerag_pydoc_cloze", "edgerag_stdlib_docstrings"}
    assert all(0.0 <= acc <= 1.0 for acc in accuracy.values())


def test_tasks_are_deterministic(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    for folder in (first, second):
        folder.mkdir()
        tasks.write(folder, _reference_texts(), limit=20, seed=0, data_prefix="x")
    for name in ("edgerag_pydoc_cloze.jsonl", "edgerag_stdlib_docstrings.jsonl"):
        assert (first / name).read_bytes() == (second / name).read_bytes()


def test_program_scorer_matches_the_runtime(tiny_program, tiny_ptes):
    """The CPU judge of fake-quantized (QNN) programs agrees with the runtime on fp32."""
    import copy

    program, _ = tiny_program
    ids = [1, 40, 80, 120, 160, 200, 240]
    ours = scorers.target_logprobs(scorers.ProgramScorer(copy.deepcopy(program), 128), ids, 2)
    runtime = scorers.target_logprobs(scorers.RuntimeScorer(tiny_ptes["fp32"]), ids, 2)
    assert (ours - runtime).abs().max() < 1e-3
