"""The LLM path on a tiny random Llama: parity at every step, quantization that really happens."""

from __future__ import annotations

import copy

import pytest
import torch

from pipeline.config import Pt2eConfig, QuantConfig, TensorQuant
from pipeline.errors import BadInput
from pipeline.llm import export, schemes
from pipeline.llm.pt2e import Observed

PROMPT = [1, 17, 230, 99, 410, 5, 77]


def _run(program_or_module, tokens, start=0):
    module = program_or_module.module() if hasattr(program_or_module, "module") else (
        program_or_module)
    out = module(torch.tensor([tokens]), {"input_pos": torch.tensor([start])})
    return (out[0] if isinstance(out, tuple) else out).reshape(-1)


def test_executorch_llama_matches_transformers(tiny_llm):
    hf, params, llm, weights = tiny_llm
    model = export.build_eager(params, llm, weights)
    with torch.no_grad():
        reference = hf(torch.tensor([PROMPT])).logits[0, -1]
        ours = _run(model, PROMPT)
    assert torch.allclose(reference, ours, atol=1e-4), (reference - ours).abs().max()


def test_exported_program_prefill_and_decode_match_eager(tiny_llm, tiny_program):
    hf, *_ = tiny_llm
    program, _ = tiny_program
    graph = copy.deepcopy(program).module()
    with torch.no_grad():
        prefill = _run(graph, PROMPT[:-1])
        decode = _run(graph, PROMPT[-1:], start=len(PROMPT) - 1)
        reference = hf(torch.tensor([PROMPT])).logits[0]
    assert torch.allclose(prefill, reference[-2], atol=1e-4)
    assert torch.allclose(decode, reference[-1], atol=1e-4)


def _torchao(group_size=32, bits=4, head=None):
    return QuantConfig(name="t", method="torchao", activations="int8_dynamic", bits=bits,
                       group_size=group_size, embedding=TensorQuant(bits=8, group_size=0),
                       head=head)


def test_torchao_8da4w_quantizes_and_stays_close(tiny_llm, tiny_program):
    _, params, llm, _ = tiny_llm
    program, metadata = tiny_program
    quant = schemes.scheme(_torchao())
    quantized = quant.quantize(_torchao(), program, params, llm, metadata, None)
    targets = {str(n.target) for n in quantized.graph.nodes if n.op == "call_function"}
    assert any("quantize_affine" in t or "choose_qparams" in t for t in targets), targets
    with torch.no_grad():
        ref, out = _run(copy.deepcopy(program), PROMPT), _run(quantized, PROMPT)
    error = ((out - ref).norm() / ref.norm()).item()
    assert 0 < error < 0.5


def test_group_size_not_dividing_a_width_fails_before_export(tiny_llm, tiny_program):
    _, params, llm, _ = tiny_llm
    program, metadata = tiny_program
    with pytest.raises(BadInput, match=r"quant.group_size=256 does not divide .* width 64"):
        schemes.scheme(_torchao(256)).quantize(_torchao(256), program, params, llm, metadata,
                                               None)


def test_pt2e_uses_the_calibration_statistics(tiny_llm, tiny_program):
    _, params, llm, _ = tiny_llm
    program, metadata = tiny_program
    quant = QuantConfig(name="s8", method="pt2e", pt2e=Pt2eConfig(quantizer="xnnpack"))
    scheme = schemes.scheme(quant)
    generator = torch.Generator().manual_seed(0)
    samples = [torch.randint(3, 512, (24,), generator=generator) for _ in range(4)]
    stats = scheme.calibrate(quant, copy.deepcopy(program), samples)
    assert stats.observers and all("min_val" in s or "max_val" in s
                                   for s in stats.observers.values())
    widened = Observed({name: {k: v * 8 for k, v in state.items()}
                        for name, state in stats.observers.items()})
    with torch.no_grad():
        ref = _run(copy.deepcopy(program), PROMPT)
        calibrated = _run(scheme.quantize(quant, copy.deepcopy(program), params, llm,
                                          metadata, stats), PROMPT)
        coarse = _run(scheme.quantize(quant, copy.deepcopy(program), params, llm, metadata,
                                      widened), PROMPT)
    error = (calibrated - ref).norm() / ref.norm()
    coarse_error = (coarse - ref).norm() / ref.norm()
    assert 0 < error < coarse_error


def test_fp32_pte_in_the_runtime_matches_the_program(pte_llm, pte_program, tiny_ptes):
    from pipeline import runtime

    program, _ = pte_program
    _, _, llm, _ = pte_llm
    loaded = runtime.Program(tiny_ptes["fp32"])
    assert loaded.constant("get_max_seq_len") == llm.export.max_seq_length
    assert loaded.constant("get_bos_id") == 1
    with torch.no_grad():
        ref = _run(copy.deepcopy(program), PROMPT)
    got = runtime.llm_logits(loaded, PROMPT, 0)
    assert torch.allclose(got, ref, atol=1e-3, rtol=1e-3), (got - ref).abs().max()


def test_8da8w_puts_every_linear_in_xnnpack_and_stays_closer_than_4_bits(pte_llm, pte_program,
                                                                         tmp_path):
    """quant=8da8w (the home of a Q8_0 source): int8 weights per row, which XNNPACK's qc8w
    kernels run, where 8 bits in groups of 32 (Q8_0's own grid) fail lowering."""
    from pipeline import conf, params_file, runtime
    from pipeline.config import BackendConfig
    from pipeline.llm import lower

    _, params, llm, _ = pte_llm
    program, metadata = pte_program
    recipe = params_file.validate(conf.compose(["experiment=tiny", "quant=8da8w"])).quant
    eight = schemes.scheme(recipe).quantize(recipe, copy.deepcopy(program), params, llm,
                                            metadata, None)
    four = schemes.scheme(_torchao()).quantize(_torchao(), copy.deepcopy(program), params, llm,
                                               metadata, None)
    backend = BackendConfig(name="xnnpack")
    backend.xnnpack.weights_file = False
    lowered = lower.lower(copy.deepcopy(eight), llm, metadata, backend, "q8")
    left = {str(n.target) for n in lowered.exported_program().graph.nodes
            if n.op == "call_function" and "embedding" not in str(n.target)
            and any(word in str(n.target) for word in ("linear", "quant", "qparams", "mm"))}
    assert not left, left  # every linear and its (de)quantization inside XNNPACK
    (tmp_path / "q8.pte").write_bytes(lowered.buffer)
    with torch.no_grad():
        ref, out8, out4 = (_run(copy.deepcopy(program), PROMPT), _run(eight, PROMPT),
                           _run(four, PROMPT))
    got = runtime.llm_logits(runtime.Program(tmp_path / "q8.pte"), PROMPT, 0)
    error = {name: ((out - ref).norm() / ref.norm()).item()
             for name, out in (("8", out8), ("4", out4), ("pte", got))}
    assert 0 < error["8"] < error["4"] / 4 and error["pte"] < error["4"] / 4, error


@pytest.mark.parametrize("precision, dtype", [("bf16", torch.bfloat16), ("int8", torch.int8)])
def test_a_kv_cache_precision_is_stored_and_runs_in_the_runtime_close_to_fp32(
        tiny_llm, precision, dtype, tmp_path):
    """model.kv_cache: the cache in bf16 (ExecuTorch's custom SDPA op on bf16) or ExecuTorch's
    int8 per-token cache and quantized SDPA op, through lowering and the runtime: fewer bytes per
    cached position, logits a small, nonzero step from the fp32 cache's."""
    from pipeline import runtime
    from pipeline.config import BackendConfig
    from pipeline.llm import lower

    hf, params, llm, weights = tiny_llm
    metadata = export.runner_metadata(params, llm, 1, [2])
    model = export.apply(export.build_eager(params, llm, weights),
                         export.runner_transforms(llm, kv_cache=precision))
    program = export.export_program(model, llm, metadata, precision)
    assert export.kv_cache_precision(program) == precision
    # (int8's quantized SDPA module holds the same cache under its own name)
    caches = {name: value.dtype for name, value in program.state_dict.items()
              if name.endswith(("k_cache", "v_cache")) and ".SDPA." not in name}
    assert len(caches) == 2 * params["n_layers"] and set(caches.values()) == {dtype}, caches
    backend = BackendConfig(name="xnnpack")
    backend.xnnpack.weights_file = False
    pte = tmp_path / f"{precision}.pte"
    pte.write_bytes(lower.lower(program, llm, metadata, backend, precision).buffer)
    loaded = runtime.Program(pte)
    with torch.no_grad():
        reference = hf(torch.tensor([PROMPT])).logits[0, -1]
    runtime.llm_logits(loaded, PROMPT[:-1], 0)
    got = runtime.llm_logits(loaded, PROMPT[-1:], len(PROMPT) - 1)  # reads the cache
    error = ((got - reference).norm() / reference.norm()).item()
    assert 1e-5 < error < 0.05, error
