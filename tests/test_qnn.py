"""The Qualcomm QNN path without the SDK: QNN-shaped export, every QnnQuantizer scheme calibrated
and converted, lowering refused in one sentence, and no attempt to download an SDK."""

from __future__ import annotations

import copy
import dataclasses
import os
import socket

import pytest
import torch

from pipeline import conf, config, errors, params_file
from pipeline.errors import BadInput
from pipeline.evaluation.program import QUANTIZE
from pipeline.llm import checks, export, lower, schemes

SCHEMES = ("qnn_8a8w", "qnn_16a8w", "qnn_16a4w", "qnn_16a4w_block")
PROMPT = [1, 17, 230, 99, 410, 5, 77, 301, 12, 44]


def _cfg(*overrides: str) -> config.Config:
    return params_file.validate(conf.compose(["experiment=tiny", "backend=qnn", *overrides]))


@pytest.fixture(scope="session")
def qnn_program(tiny_llm):
    """The tiny model exported for QNN: static one-token decode, QNN's source transforms."""
    _, params, _, weights = tiny_llm
    llm = checks.llm_config(_cfg("quant=fp32").model.executorch)
    metadata = export.runner_metadata(params, llm, 1, [2])
    model = export.apply(export.build_eager(params, llm, weights),
                         export.runner_transforms(llm, "qnn"))
    return export.export_program(model, llm, metadata, "tiny"), llm, params, metadata


@pytest.fixture(scope="session")
def samples():
    generator = torch.Generator().manual_seed(0)
    return [torch.randint(3, 512, (12,), generator=generator) for _ in range(2)]


def _quantize(quant, qnn_program, samples):
    program, llm, params, metadata = qnn_program
    scheme = schemes.scheme(quant)
    stats = scheme.calibrate(quant, copy.deepcopy(program), samples)
    return stats, scheme.quantize(quant, copy.deepcopy(program), params, llm, metadata, stats)


@pytest.fixture(scope="session")
def converted(qnn_program, samples):
    """scheme name → (calibration statistics, converted program), each from its conf/quant file;
    blocks of 32 so that even the 64-wide linears get two scales per row."""
    blocks = {"qnn_16a4w_block": ["quant.pt2e.block_size=32"]}
    return {name: _quantize(_cfg(f"quant={name}", *blocks.get(name, [])).quant, qnn_program,
                            samples)
            for name in SCHEMES}


def _decode(program, tokens=PROMPT):
    """Logits at every position, fed one token per call as the runner feeds a static graph."""
    module = copy.deepcopy(program).module()
    with torch.no_grad():
        return torch.stack([
            module(torch.tensor([[token]]), {"input_pos": torch.tensor([pos])}).reshape(-1)
            for pos, token in enumerate(tokens)
        ])


def _targets(program) -> set[str]:
    return {str(n.target) for n in program.graph.nodes if n.op == "call_function"}


def _q_ranges(program, op: str) -> set[tuple[int, int]]:
    """(quant_min, quant_max) of every `op` node: which bit widths the converted graph uses."""
    return {(int(n.args[-3]), int(n.args[-2])) for n in program.graph.nodes
            if n.op == "call_function" and str(n.target) == op}


def test_qnn_export_has_no_custom_cpu_ops_and_matches_the_xnnpack_export(qnn_program,
                                                                          tiny_program):
    program, *_ = qnn_program
    assert not any(t.startswith("llama.") for t in _targets(program))
    assert any(t.startswith("llama.") for t in _targets(tiny_program[0]))
    assert "aten.conv2d.default" in _targets(program)
    export.register_runtime_ops()
    reference = copy.deepcopy(tiny_program[0]).module()
    with torch.no_grad():
        prefill = reference(torch.tensor([PROMPT]), {"input_pos": torch.tensor([0])})
    assert torch.allclose(_decode(program)[-1], prefill.reshape(-1), atol=1e-4)


@pytest.mark.parametrize("name", SCHEMES)
def test_each_scheme_calibrates_and_converts_at_its_bit_widths(converted, name):
    stats, program = converted[name]
    assert sum("min_val" in state for state in stats.observers.values()) > 10
    activations = _q_ranges(program, QUANTIZE)
    assert (0, 255 if name == "qnn_8a8w" else 65535) in activations, activations
    weights = _q_ranges(program, "quantized_decomposed.dequantize_per_channel.default")
    if name == "qnn_16a4w_block":
        blocks = [n.args[1] for n in program.graph.nodes
                  if str(n.target) == "torchao.dequantize_affine.default"]
        assert blocks and all(list(b) == [1, 32, 1, 1] for b in blocks), blocks
    else:
        # 4-bit schemes keep the output head at 8 bits, as ExecuTorch's Qualcomm Llama recipes do.
        assert weights == ({(-7, 7), (-127, 127)} if name == "qnn_16a4w" else {(-127, 127)}), \
            weights
    assert torch.isfinite(_decode(program)).all()


def test_error_shrinks_with_wider_activations_and_weights(qnn_program, converted):
    reference = _decode(qnn_program[0])

    def error(name):
        return ((_decode(converted[name][1]) - reference).norm() / reference.norm()).item()

    errors_by_scheme = {name: error(name) for name in ("qnn_8a8w", "qnn_16a8w", "qnn_16a4w")}
    assert 0 < errors_by_scheme["qnn_16a8w"] < errors_by_scheme["qnn_8a8w"], errors_by_scheme
    assert errors_by_scheme["qnn_16a8w"] < errors_by_scheme["qnn_16a4w"], errors_by_scheme


def test_unknown_qnn_dtype_is_one_sentence_listing_the_allowed_values():
    with pytest.raises(BadInput, match=r"use_4a4w.*choose one of: use_16a4w, use_16a4w_block, "
                                       r"use_8a8w, use_16a8w\.$"):
        _cfg("quant=qnn_8a8w", "quant.pt2e.dtype=use_4a4w")
    with pytest.raises(BadInput, match="needs backend=qnn"):
        params_file.validate(conf.compose(["experiment=tiny", "quant=qnn_16a4w"]))


@pytest.fixture
def no_sdk(monkeypatch):
    monkeypatch.delenv("QNN_SDK_ROOT", raising=False)


@pytest.mark.parametrize("root", [None, ""])
def test_lowering_without_the_sdk_fails_first_in_one_sentence(no_sdk, monkeypatch, root,
                                                               tmp_path, capsys):
    if root is not None:
        monkeypatch.setenv("QNN_SDK_ROOT", root)
    cfg = _cfg("quant=qnn_16a4w")
    missing = tmp_path / "never-created"
    # Inputs that do not exist: any work before the SDK check would fail on them instead.
    with pytest.raises(SystemExit) as exit_info:
        errors.run(lambda: lower.run(cfg, missing, missing, missing))
    assert exit_info.value.code == 2
    message = capsys.readouterr().err.strip()
    assert message.count("\n") == 0 and "QNN_SDK_ROOT" in message
    assert "Qualcomm AI Engine Direct SDK" in message


def test_an_sdk_folder_without_its_libraries_is_refused(monkeypatch, tmp_path):
    monkeypatch.setenv("QNN_SDK_ROOT", str(tmp_path))
    with pytest.raises(BadInput, match=r"QNN_SDK_ROOT=.* has no lib/x86_64-linux-clang/libQnnHtp"):
        lower.check_backend_ready(_cfg("quant=fp32").backend)
    libraries = tmp_path / "lib" / "x86_64-linux-clang"
    libraries.mkdir(parents=True)
    (libraries / "libQnnHtp.so").touch()
    monkeypatch.setenv("LD_LIBRARY_PATH", "")
    with pytest.raises(BadInput, match="LD_LIBRARY_PATH lacks"):
        lower.check_backend_ready(_cfg("quant=fp32").backend)
    monkeypatch.setenv("LD_LIBRARY_PATH", str(libraries))
    lower.check_backend_ready(_cfg("quant=fp32").backend)


@pytest.fixture
def network_and_installer_recorded(no_sdk, monkeypatch):
    """Every connection, DNS lookup and SDK install attempt is recorded and refused."""
    from executorch.backends.qualcomm.utils import qnn_sdk_setup

    attempts: list[str] = []

    def refuse(kind):
        def refused(*args, **kwargs):
            attempts.append(f"{kind}{args[:2]}")
            raise OSError(f"network disabled in this test ({kind})")
        return refused

    monkeypatch.setattr(socket.socket, "connect", refuse("connect"))
    monkeypatch.setattr(socket.socket, "connect_ex", refuse("connect_ex"))
    monkeypatch.setattr(socket, "create_connection", refuse("create_connection"))
    monkeypatch.setattr(socket, "getaddrinfo", refuse("getaddrinfo"))
    monkeypatch.setattr(qnn_sdk_setup, "_install_qnn_sdk",
                        lambda: attempts.append("install_qnn_sdk") or False)
    monkeypatch.setattr(qnn_sdk_setup, "_is_linux_x86", lambda: True)
    monkeypatch.setattr(qnn_sdk_setup, "_sdk_ready", False)
    return attempts, qnn_sdk_setup


def test_the_recorder_sees_executorchs_download_path(network_and_installer_recorded):
    attempts, qnn_sdk_setup = network_and_installer_recorded
    with pytest.raises(RuntimeError, match="Failed to set up QNN SDK"):
        qnn_sdk_setup.setup_qnn_sdk()
    assert attempts == ["install_qnn_sdk"]


def test_quantizing_for_qnn_never_tries_to_download_an_sdk(network_and_installer_recorded,
                                                             qnn_program, samples):
    attempts, _ = network_and_installer_recorded
    quant = _cfg("quant=qnn_16a4w_block").quant
    _, program = _quantize(quant, qnn_program, samples[:1])
    assert attempts == []
    assert "QNN_SDK_ROOT" not in os.environ
    assert "torchao.dequantize_affine.default" in _targets(program)


def test_lowering_directly_checks_the_sdk_before_executorch_can_download(
        network_and_installer_recorded, qnn_program):
    attempts, _ = network_and_installer_recorded
    program, llm, _, metadata = qnn_program
    with pytest.raises(BadInput, match="QNN_SDK_ROOT"):
        lower.to_pte(program, llm, metadata, _cfg("quant=fp32").backend, "tiny")
    assert attempts == []


@pytest.fixture(scope="session")
def outlier_program(tiny_llm):
    """The tiny QNN export with one massive activation, as SmolLM2's residual stream has (724
    after its first 4 layers): BOS's embedding carries 1000 in one channel, so every RMSNorm input
    holds it from then on."""
    _, params, _, weights = tiny_llm
    weights = dict(weights)
    weights["tok_embeddings.weight"] = weights["tok_embeddings.weight"].clone()
    weights["tok_embeddings.weight"][1, 0] = 1000.0
    llm = checks.llm_config(_cfg("quant=fp32").model.executorch)
    metadata = export.runner_metadata(params, llm, 1, [2])
    model = export.apply(export.build_eager(params, llm, weights),
                         export.runner_transforms(llm, "qnn"))
    return export.export_program(model, llm, metadata, "tiny"), llm, params, metadata


def _nll(logits, tokens):
    targets = torch.tensor(tokens[1:])[:, None]
    return -torch.log_softmax(logits[:-1], -1).gather(1, targets)[:, 0]


def test_converted_program_tracks_fp32_beyond_the_calibrated_positions(outlier_program):
    """Issue #4: the 16-bit program scored perplexity 395k vs 20. Calibrated on 2 windows of 12
    tokens (BOS first), it must keep per-token NLL close to fp32 over 32 positions, 20 of them
    past any calibrated one. Before the fix, the decomposed RMSNorm squared the outlier into its
    16-bit range (ordinary tokens' squares rounded to 0) and the -65535 mask quantized attention
    scores in steps of 1."""
    generator = torch.Generator().manual_seed(1)
    calibration = [torch.cat([torch.tensor([1]), torch.randint(3, 512, (11,), generator=generator)])
                   for _ in range(2)]
    tokens = [1, *torch.randint(3, 512, (31,), generator=generator).tolist()]
    _, converted = _quantize(_cfg("quant=qnn_16a8w").quant, outlier_program, calibration)
    targets = _targets(converted)
    assert "aten.rms_norm.default" in targets and "aten.rsqrt.default" not in targets
    # Scores + mask reach softmax through a 16-bit range of about 255 + scores, not 65535.
    softmax_scales = [float(n.args[0].args[1]) for n in converted.graph.nodes
                      if str(n.target) == "aten._softmax.default"
                      or str(n.target) == "aten.softmax.int"]
    assert softmax_scales and max(softmax_scales) < 0.02, \
        softmax_scales
    reference = _nll(_decode(outlier_program[0], tokens), tokens)
    quantized = _nll(_decode(converted, tokens), tokens)
    gap = (quantized - reference).abs()
    assert gap[11:].mean() < 0.05 and gap.max() < 0.25, gap


def qnn_mask_value() -> float:
    from pipeline.llm import qnn

    return qnn.MASK_VALUE


def test_logits_margin_widens_only_the_logits_range(qnn_program, converted):
    """quant.pt2e.logits_margin scales the calibrated range of the observers from the output head
    to the logits and of nothing else (the 4-bit model overshoots the fp32 range on new text)."""
    stats, narrow = converted["qnn_16a4w"]
    quant = _cfg("quant=qnn_16a4w").quant
    assert quant.pt2e.logits_margin == 3.0
    program, llm, params, metadata = qnn_program
    unit = copy.deepcopy(quant)
    unit.pt2e.logits_margin = 1.0
    ones = schemes.scheme(unit).quantize(unit, copy.deepcopy(program), params, llm, metadata,
                                         stats)
    wide = schemes.scheme(quant).quantize(quant, copy.deepcopy(program), params, llm, metadata,
                                          stats)

    def scales(p):
        return [float(n.args[1]) for n in p.graph.nodes
                if str(n.target) == QUANTIZE]

    before, after = scales(ones), scales(wide)
    assert len(before) == len(after)
    changed = [(b, a) for b, a in zip(before, after, strict=True) if abs(a - b) > 1e-9 * b]
    assert changed and all(abs(a / b - 3.0) < 1e-3 for b, a in changed), changed
    assert len(changed) <= 4  # the head's output and the reshapes after it, nothing upstream
    assert scales(narrow) == after  # the fixture's conversion used the configured margin


def _bits_of_weights(program) -> list[int]:
    from pipeline.llm import footprint

    return sorted(bits for bits in footprint._declared_bits(program).values() if bits < 16)


def test_qnn_planner_keeps_the_layer_made_sensitive_at_8_bits_within_budget(
        tiny_llm, qnn_program, samples, tmp_path):
    """qnn_mixed_auto: measured on the fp32 model through QNN's own block grid, the linear made
    sensitive (loud, an outlier in every block) is the one kept at 16a8w when the budget has
    room for exactly one such layer; the converted program holds it at 8 bits."""
    from pipeline.llm import qnn_tuning, sensitivity

    hf, *_ = tiny_llm
    model = type(hf)(hf.config).eval()
    model.load_state_dict(hf.state_dict())
    with torch.no_grad():
        target = model.model.layers[1].mlp.down_proj.weight
        target *= 30.0
        target[:, ::32] *= 8.0
    model.save_pretrained(tmp_path)
    quant = _cfg("quant=qnn_mixed_auto", "quant.pt2e.block_size=32").quant
    program, llm, params, metadata = qnn_program
    scheme = schemes.scheme(quant)
    shapes = {name: tuple(m.weight.shape) for name, m in sensitivity._candidates(model).items()}
    candidates = qnn_tuning.four_bit_linears(scheme._prepare(quant, copy.deepcopy(program)))
    assert len(candidates) == 14  # 7 linears x 2 layers; the head is 8-bit already
    low = {n: qnn_tuning.tensor_bytes(shapes[n], 4, 32) for n in candidates}
    name = "layers.1.feed_forward.w2"
    extra = qnn_tuning.tensor_bytes(shapes[name], 8, 0) - low[name]
    quant.mixed.budget_mb = (sum(low.values()) + extra + 10) / 1e6
    stats = scheme.calibrate(quant, copy.deepcopy(program), samples, model_dir=tmp_path)
    eight = [n for n, c in stats.plan["layers"].items() if c["bits"] == 8]
    assert eight == [name], stats.plan["layers"]
    assert stats.plan["estimated_bytes"] <= stats.plan["budget_bytes"]
    converted = scheme.quantize(quant, copy.deepcopy(program), params, llm, metadata, stats)
    plain = _quantize(_cfg("quant=qnn_16a4w_block", "quant.pt2e.block_size=32").quant,
                      qnn_program, samples)[1]
    assert _bits_of_weights(plain) == [4] * 14 + [8]  # the head
    assert _bits_of_weights(converted) == [4] * 13 + [8, 8]


def test_seq_mse_shrinks_scales_where_it_lowers_the_layer_error(qnn_program, samples,
                                                                  tmp_path):
    """qnn_16a4w_seqmse: one factor in (0, 1] per weight, some below 1, saved with the
    calibration and applied at conversion, where it changes the 4-bit program."""
    quant = _cfg("quant=qnn_16a4w_seqmse", "quant.pt2e.block_size=32").quant
    program, llm, params, metadata = qnn_program
    scheme = schemes.scheme(quant)
    stats = scheme.calibrate(quant, copy.deepcopy(program), samples)
    assert len(stats.seq_mse) == 15 and all(0 < f <= 1 for f in stats.seq_mse.values())
    assert min(stats.seq_mse.values()) < 0.99, stats.seq_mse
    scheme.save(stats, samples, tmp_path)
    loaded = scheme.load(tmp_path)
    assert loaded.seq_mse == stats.seq_mse and loaded.plan is None
    searched = scheme.quantize(quant, copy.deepcopy(program), params, llm, metadata, loaded)
    off = copy.deepcopy(quant)
    off.pt2e.seq_mse_candidates = 0
    plain = scheme.quantize(off, copy.deepcopy(program), params, llm, metadata,
                            dataclasses.replace(stats, seq_mse=None))
    assert not torch.equal(_decode(searched), _decode(plain))


def test_seq_mse_and_mixed_precision_need_a_4_bit_qnn_recipe():
    with pytest.raises(BadInput, match="searches 4-bit QNN weight scales"):
        _cfg("quant=qnn_16a8w", "quant.pt2e.seq_mse_candidates=50")
    with pytest.raises(BadInput, match="chooses 8-bit layers of a 4-bit QNN recipe"):
        _cfg("quant=qnn_8a8w", "+quant.mixed={budget_mb: 10}")


def test_clip_counter_measures_how_well_calibrated_ranges_hold(converted, samples):
    """evaluate_quantized's coverage figure. Exactly: at a quantize step of scale 0.1 (int8), 3 of
    6 values fall outside [-128, 127]. In a converted program, on the text it was calibrated on
    (MinMax ranges), next to nothing is clipped, and every quantize step is counted."""
    import torchao.quantization.pt2e  # noqa: F401 (registers the quantized_decomposed ops)

    from pipeline.evaluation.program import ClipCounter

    def quantize(x):
        return torch.ops.quantized_decomposed.quantize_per_tensor.default(
            x, 0.1, 0, -128, 127, torch.int8)

    graph = torch.fx.symbolic_trace(quantize)
    counter = ClipCounter(graph)
    graph(torch.tensor([0.0, 12.7, 12.8, -12.8, -12.9, 100.0]))
    assert counter.summary() == {"activation_clip_pct": 50.0, "quantize_steps": 1,
                                 "quantize_steps_clipping": 1}

    module = copy.deepcopy(converted["qnn_16a8w"][1]).module()
    counter = ClipCounter(module)
    with torch.no_grad():
        for position, token in enumerate(samples[0].tolist()):
            module(torch.tensor([[token]]), {"input_pos": torch.tensor([position])})
    held = counter.summary()
    steps = sum(1 for n in converted["qnn_16a8w"][1].graph.nodes if str(n.target) == QUANTIZE)
    assert held["quantize_steps"] == steps > 20
    # A few values at the edges of a few ranges (rounding, QNN's fixed ranges), no more.
    assert held["activation_clip_pct"] < 0.01, held


def test_program_scorer_folds_the_weights_once_and_changes_no_logit(converted):
    """evaluate_quantized's speed: the weights' dequantize steps are computed once, not per token,
    and the logits are the converted program's own, bit for bit."""
    from pipeline.evaluation import scorers

    program = converted["qnn_16a4w_block"][1]
    expected = _decode(program)
    scorer = scorers.ProgramScorer(copy.deepcopy(program), 128)
    with torch.no_grad():
        folded = torch.stack([scorer._last_logits([token], pos)
                              for pos, token in enumerate(PROMPT)])
    assert torch.equal(folded, expected.reshape(folded.shape))
    per_token = {str(n.target) for n in scorer.module.graph.nodes if n.op == "call_function"}
    assert not {t for t in per_token if "dequantize_per_channel" in t or "dequantize_affine" in t}
    assert _targets(program) & {"quantized_decomposed.dequantize_per_channel.default",
                                "torchao.dequantize_affine.default"}


def test_linears_kept_at_16a8w_observe_activations_as_the_recipe_does(qnn_program):
    """The head and a mixed plan's 8-bit linears take the recipe's activation observer (MinMax);
    ExecuTorch's default, a moving average of each call's range, clipped SmolLM2's decoder
    outliers (qnn_mixed_auto scored perplexity 1,211 with it)."""
    from torchao.quantization.pt2e import MinMaxObserver, MovingAverageMinMaxObserver

    from pipeline.llm import qnn_tuning

    quant = _cfg("quant=qnn_16a4w_block", "quant.pt2e.block_size=32").quant
    program = qnn_program[0]
    prepared = schemes.scheme(quant)._prepare(
        quant, copy.deepcopy(program), {"layers": {"layers.0.feed_forward.w2": {"bits": 8}}})
    linears = qnn_tuning.linear_weights(prepared)
    for name in ("output", "layers.0.feed_forward.w2"):
        node = linears[name][0]
        observers = [prepared.get_submodule(n.target) for n in (node.args[0], *node.users)
                     if n.op == "call_module"]
        assert observers and all(type(o) is MinMaxObserver for o in observers), observers
        assert not any(isinstance(o, MovingAverageMinMaxObserver) for o in observers)
