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
def reference(pte_llm):
    hf, *_ = pte_llm
    return scorers.EagerScorer(hf, 128)


def test_fp32_pte_perplexity_equals_eager(tiny_ptes, reference, windows):
    result = perplexity.score(scorers.RuntimeScorer(tiny_ptes["fp32"]), reference, windows)
    assert result["tokens"] == sum(len(w) - 1 for w in windows)
    assert abs(result["ppl"] - result["ppl_reference"]) / result["ppl_reference"] < 1e-3


def test_quantized_pte_perplexity_is_its_programs(tiny_ptes, pte_quantized, reference,
                                                  windows):
    """The runtime scores the quantized `.pte` as the quantized program scores on the CPU: what
    lowering adds is kernel rounding, not a different model. A random model's perplexity barely
    moves under 4 bits (-0.005% here), so its tokens' log-probabilities say it: the `.pte` sits
    far nearer its program than the program sits to fp32 (about 20 times, measured)."""
    import copy

    ours = scorers.RuntimeScorer(tiny_ptes["8da4w"])
    program = scorers.ProgramScorer(copy.deepcopy(pte_quantized), 128)
    pte_ppl = perplexity.score(ours, reference, windows)
    program_ppl = perplexity.score(program, reference, windows)
    assert abs(pte_ppl["ppl"] - program_ppl["ppl"]) / program_ppl["ppl"] < 0.01
    for window in windows:
        got, quantized, fp32 = (scorers.target_logprobs(s, window, 1)
                                for s in (ours, program, reference))
        assert 0 < (got - quantized).norm() < (quantized - fp32).norm() / 5


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
    # Each task scored 4 documents: an accuracy is a whole number of quarters.
    assert all(acc * 4 == round(acc * 4) for acc in accuracy.values())


class _UniformScorer:
    """Every token equally likely: a choice scores -len(tokens) * log(V), so lm-eval must pick
    each document's shortest choice (the first of equals)."""

    max_context_len = 128

    def logprobs(self, ids, start):
        import torch

        return torch.log_softmax(torch.zeros(len(ids) - start, 512), dim=-1)


def test_lm_eval_accuracy_is_what_a_known_scorer_earns(tmp_path, tiny_tokenizer, monkeypatch):
    import json

    from pipeline.evaluation.evaluate import _lm_eval

    tokenizer, _ = tiny_tokenizer
    short, long = " the", " zqxj vkpw mmbr"
    assert len(tokenizer(short)["input_ids"]) < len(tokenizer(long)["input_ids"])
    # Three documents whose answer is the short choice, one whose answer is the long one.
    docs = [{"context": f"Question {n}:", "choices": [long, short], "label": 1} for n in range(3)]
    docs.append({"context": "Question 3:", "choices": [short, long], "label": 1})
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks/known.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (tmp_path / "tasks/known.yaml").write_text(tasks.YAML.format(task="known",
                                                                 data="tasks/known.jsonl"))
    assert _lm_eval(_UniformScorer(), tokenizer, tmp_path / "tasks", limit=4) == {"known": 0.75}


def test_tasks_are_deterministic_across_interpreters(tmp_path):
    """Two interpreters with different hash seeds write the same task files."""
    import os
    import subprocess
    import sys

    from tests.conftest import REPO

    script = ("import sys; from pathlib import Path; from pipeline.evaluation import tasks; "
              "from tests.test_evaluation import _reference_texts; "
              "tasks.write(Path(sys.argv[1]), _reference_texts(), limit=20, seed=0, "
              "data_prefix='x')")
    for folder, seed in ((tmp_path / "a", "1"), (tmp_path / "b", "2")):
        folder.mkdir()
        subprocess.run([sys.executable, "-c", script, str(folder)], check=True, cwd=REPO,
                       env={**os.environ, "PYTHONHASHSEED": seed})
    for name in ("edgerag_pydoc_cloze.jsonl", "edgerag_stdlib_docstrings.jsonl"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_program_scorer_matches_the_runtime(pte_program, tiny_ptes):
    """The CPU judge of fake-quantized (QNN) programs agrees with the runtime on fp32."""
    import copy

    program, _ = pte_program
    ids = [1, 40, 80, 120, 160, 200, 240]
    ours = scorers.target_logprobs(scorers.ProgramScorer(copy.deepcopy(program), 128), ids, 2)
    runtime = scorers.target_logprobs(scorers.RuntimeScorer(tiny_ptes["fp32"]), ids, 2)
    assert (ours - runtime).abs().max() < 1e-3


@pytest.mark.parametrize("loss", [800.0, float("inf"), float("nan")])
def test_a_loss_whose_perplexity_overflows_is_one_sentence_about_broken_logits(loss):
    from pipeline.errors import BadInput

    assert perplexity.perplexity([2.0, 4.0]) == pytest.approx(2.718281828 ** 3)
    with pytest.raises(BadInput, match="its logits are broken"):
        perplexity.perplexity([loss, loss])


class _Stats:
    """The stock runner's stats as its Python binding hands them over (`to_json_string`)."""

    def to_json_string(self) -> str:
        import json

        return json.dumps({"model_load_start_ms": 0, "model_load_end_ms": 500,
                           "inference_start_ms": 1000, "prompt_eval_end_ms": 1100,
                           "first_token_ms": 1110, "inference_end_ms": 1200,
                           "prompt_tokens": 50, "generated_tokens": 9})


class _Runner:
    def reset(self) -> None:
        pass

    def generate(self, prompt, config, on_piece, on_stats) -> None:
        on_stats(_Stats())


def test_ask_and_the_speed_evaluation_report_one_decode_rate_for_the_same_stats():
    """Both go through runtime.runner_rates: 9 tokens decoded after the first in 90 ms."""
    from pipeline.device import ask
    from pipeline.evaluation import speed

    evaluated, _ = speed._generate(_Runner(), "prompt", 10)
    shown = ask._timings(3.0, 50, _Stats())
    assert evaluated["decode_tok_s"] == shown["decode_tok_s"] == 100.0
    assert evaluated["time_to_first_token_ms"] == shown["time_to_first_token_ms"] == 110
    assert evaluated["generated_tokens"] == shown["generated_tokens"] == 10
