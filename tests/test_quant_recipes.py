"""Recipes from issue #7 on the tiny model: the Q4_1 grid kept exactly, and the mixed planner."""

from __future__ import annotations

import pytest
import torch

from pipeline.config import MixedConfig, QuantConfig, TensorQuant
from pipeline.errors import BadInput
from pipeline.llm import grid, schemes, sensitivity


def _q4_1(weight: torch.Tensor) -> torch.Tensor:
    """Round a weight onto a Q4_1 grid (float scale and minimum per group of 32)."""
    groups = weight.view(weight.shape[0], -1, 32)
    low = groups.amin(-1, keepdim=True)
    step = (groups.amax(-1, keepdim=True) - low) / 15
    return (((groups - low) / step).round() * step + low).view_as(weight)


def test_decompose_is_exact_on_a_q4_1_grid_and_refuses_other_weights():
    torch.manual_seed(0)
    weight = _q4_1(torch.randn(8, 64))
    codes, scales, offsets = grid.decompose(weight, "w")
    rebuilt = (codes.float().view(8, -1, 32) * scales.unsqueeze(-1) + offsets.unsqueeze(-1))
    assert torch.allclose(rebuilt.view_as(weight), weight, atol=1e-6)
    assert codes.min() >= -8 and codes.max() <= 7
    with pytest.raises(BadInput, match="not on a 4-bit group-32 Q4_1 grid"):
        grid.decompose(torch.randn(8, 64), "w")


def _q4_0(weight: torch.Tensor) -> torch.Tensor:
    """A weight through llama.cpp's own Q4_0 quantizer (the gguf package's) and back."""
    import gguf

    kind = gguf.GGMLQuantizationType.Q4_0
    data = gguf.quants.quantize(weight.numpy().astype("float32"), kind)
    return torch.from_numpy(gguf.quants.dequantize(data, kind).reshape(weight.shape).copy())


def test_decompose_keeps_q4_0_exactly_with_positive_scales_only():
    """XNNPACK refuses negative scales; Q4_0's scale is negative wherever a group's peak is
    positive, so those groups carry a one-step offset instead, and the rest none."""
    torch.manual_seed(0)
    weight = _q4_0(torch.randn(16, 64))
    codes, scales, offsets = grid.decompose(weight, "w", "q4_0")
    rebuilt = (codes.float().view(16, -1, 32) * scales.unsqueeze(-1) + offsets.unsqueeze(-1))
    assert torch.equal(rebuilt.view_as(weight), weight)
    assert codes.min() >= -8 and codes.max() <= 7 and (scales >= 0).all()
    shifted = offsets != 0
    assert 0 < shifted.sum() < shifted.numel() and torch.equal(offsets[shifted], scales[shifted])
    with pytest.raises(BadInput, match="not on a 4-bit group-32 Q4_0 grid"):
        grid.decompose(_q4_1(torch.randn(8, 64)), "w", "q4_0")


def test_transformers_reads_a_q4_0_gguf_onto_the_grid_exactly(tiny_cfg, tmp_path):
    """The loader's dequantized Q4_0 weights (tests/tiny_gguf.py, llama.cpp's quantizer)
    decompose with no error; its Q4_1 weights are not taken for Q4_0."""
    from pipeline import sources
    from pipeline.llm import checkpoint
    from tests import tiny_gguf

    tokenizer = sources.materialize(tiny_cfg.model.tokenizer_source)
    for kind, fits in (("Q4_0", True), ("Q4_1", False)):
        model = checkpoint.load_pretrained(tiny_gguf.write(tmp_path / f"{kind}.gguf", tokenizer,
                                                           linears=kind))
        weight = model.model.layers[0].mlp.down_proj.weight
        if fits:
            codes, scales, offsets = grid.decompose(weight, "down_proj", "q4_0")
            rebuilt = codes.float().view(weight.shape[0], -1, 32) * scales.unsqueeze(-1)
            assert torch.equal((rebuilt + offsets.unsqueeze(-1)).view_as(weight), weight)
        else:
            with pytest.raises(BadInput, match="Q4_0 grid"):
                grid.decompose(weight, "down_proj", "q4_0")


def test_a_grid_linear_is_the_source_linear_with_group_sums_in_extra_rows():
    """Before quantization the split is exact: main's extra rows are the group sums of x."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 8, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(_q4_1(model[0].weight))
    source = model[0]
    x = torch.randn(3, 64)
    expected = source(x)
    assert grid.split(model, lambda fqn: True) == ["0"]
    wrapped = model[0]
    assert wrapped.main.out_features == 8 + 64 // grid.GROUP
    sums = wrapped.main(x)[:, 8:]
    assert torch.allclose(sums, x.view(3, -1, grid.GROUP).sum(-1), atol=1e-5)
    assert torch.allclose(wrapped(x), expected, atol=1e-5)


def _grid_model(tiny_llm, on_grid=_q4_1):
    from pipeline.llm import export

    _, params, llm, weights = tiny_llm
    weights = {k: on_grid(v) if k.startswith("layers.") and v.dim() == 2 else v
               for k, v in weights.items()}
    return lambda: export.build_eager(params, llm, weights)


def test_siblings_on_one_input_share_one_grid_linear_and_stay_exact(tiny_llm):
    """q/k/v and gate/up become one stacked GridLinear each; before quantization the model's
    output is the source's, and every sibling's part comes from a single call of the stack."""
    build = _grid_model(tiny_llm)
    tokens = torch.tensor([[5, 7, 9, 11]])
    reference = _logits(build(), tokens)
    model = build()
    replaced = grid.split(model, lambda fqn: fqn != "output")
    attention, feed_forward = model.layers[0].attention, model.layers[0].feed_forward
    assert {"layers.0.attention.wk", "layers.0.feed_forward.w3"} <= set(replaced)
    assert isinstance(attention.wq_wk_wv, grid.GridLinear)
    source = build().layers[0].attention
    assert attention.wq_wk_wv.sizes == [source.wq.out_features, source.wk.out_features,
                                        source.wv.out_features]
    assert isinstance(feed_forward.w1_w3, grid.GridLinear)
    assert isinstance(feed_forward.w2, grid.GridLinear)  # its input is its own
    calls = []
    attention.wq_wk_wv.main.register_forward_hook(lambda *args: calls.append(1))
    assert torch.allclose(_logits(model, tokens), reference, atol=1e-4)
    assert len(calls) == 1


def _logits(model, tokens):
    with torch.no_grad():
        out = model(tokens, {"input_pos": torch.tensor([0])})
    return out[0] if isinstance(out, tuple) else out


@pytest.mark.parametrize("kind", ["q4_1", "q4_0"])
def test_the_grid_recipe_is_closer_to_the_source_than_requantizing(tiny_llm, kind):
    build = _grid_model(tiny_llm, {"q4_1": _q4_1, "q4_0": _q4_0}[kind])
    tokens = torch.tensor([[5, 7, 9, 11, 13, 17]])
    reference = _logits(build(), tokens)

    def error(quant):
        with torch.no_grad():
            model = schemes.quantize_eager(build(), quant)
        return ((_logits(model, tokens) - reference).norm() / reference.norm()).item()

    common = dict(name="t", method="torchao", activations="none", bits=4, group_size=32)
    kept = error(QuantConfig(**common, source_grid=kind))
    requantized = error(QuantConfig(**common, symmetric=kind == "q4_0"))
    assert kept < requantized / 4, (kept, requantized)


def test_exceptions_keep_matching_linears_at_their_own_bits(tiny_llm):
    from pipeline.config import LayerException

    quant = QuantConfig(name="t", method="torchao", activations="int8_dynamic", bits=4,
                        group_size=32, exceptions=[LayerException(match=r"\.w2$", bits=8)])
    with torch.no_grad():
        model = schemes.quantize_eager(_grid_model(tiny_llm)(), quant)
    assert model.layers[0].feed_forward.w2.weight.target_dtype == torch.int8
    assert model.layers[0].feed_forward.w1.weight.target_dtype == torch.int4


@pytest.fixture(scope="module")
def measured(tiny_llm):
    hf, *_ = tiny_llm
    model = type(hf)(hf.config).eval()
    model.load_state_dict(hf.state_dict())
    target = model.model.layers[1].mlp.down_proj.weight
    with torch.no_grad():  # louder than the rest, with an outlier in every group of 32
        target *= 30.0
        target[:, ::32] *= 8.0
    torch.manual_seed(0)
    samples = [torch.randint(3, 512, (16,))]
    quant = QuantConfig(name="t", method="torchao", bits=4, group_size=32,
                        embedding=TensorQuant(bits=4, group_size=32))
    return sensitivity.measure(model, samples, quant)


def test_planner_keeps_the_most_sensitive_layer_at_8_bits_within_budget(measured):
    target = "layers.1.feed_forward.w2"
    assert max(measured, key=lambda n: measured[n]["kl"]) == target
    low = {n: sensitivity.tensor_bytes(tuple(s["shape"]), 4, s["group_size"])
           for n, s in measured.items()}
    extra = sensitivity.tensor_bytes(tuple(measured[target]["shape"]), 8, 0) - low[target]
    budget = sum(low.values()) + extra + 10
    plan = sensitivity.plan(measured, MixedConfig(budget_mb=budget / 1e6))
    assert plan["layers"][target]["bits"] == 8
    assert plan["estimated_bytes"] <= plan["budget_bytes"]
    eight = [n for n, c in plan["layers"].items() if c["bits"] == 8]
    assert eight == [target]  # the budget had room for exactly one such layer


def test_planner_refuses_a_budget_below_all_4_bit(measured):
    with pytest.raises(BadInput, match="below the all-4-bit size"):
        sensitivity.plan(measured, MixedConfig(budget_mb=1e-6))


def test_a_plan_becomes_exceptions_and_family_precisions():
    quant = QuantConfig(name="t", method="torchao", bits=4, group_size=32,
                        embedding=TensorQuant(bits=4, group_size=32))
    plan = {"layers": {"layers.0.attention.wq": {"bits": 8}, "output": {"bits": 8},
                       "tok_embeddings": {"bits": 4}, "layers.0.attention.wk": {"bits": 4}}}
    applied = schemes.apply_plan(quant, plan)
    assert [e.match for e in applied.exceptions] == [r"^layers\.0\.attention\.wq$"]
    assert (applied.head.bits, applied.head.group_size) == (8, 0)
    assert (applied.embedding.bits, applied.embedding.group_size) == (4, 32)


def test_a_weights_file_runs_identically_and_stores_the_tied_table_once(pte_llm, pte_program,
                                                                        tmp_path):
    """llm.pte + llm.ptd: the same logits as a self-contained .pte, the 8-bit table kept once."""
    from pipeline.config import BackendConfig, XnnpackConfig
    from pipeline.llm import lower
    from pipeline.runtime import Program, llm_logits, program_bytes

    _, params, llm, _ = pte_llm
    program, metadata = pte_program
    quant = QuantConfig(name="t", method="torchao", activations="int8_dynamic", bits=4,
                        group_size=32, embedding=TensorQuant(bits=8), head=TensorQuant(bits=8))
    quantized = schemes.scheme(quant).quantize(quant, program, params, llm, metadata, None)
    inline = tmp_path / "inline" / "llm.pte"
    inline.parent.mkdir()
    inline.write_bytes(lower.to_pte(quantized, llm, metadata, BackendConfig(name="xnnpack"), "t"))
    split = tmp_path / "split"
    split.mkdir()
    backend = BackendConfig(name="xnnpack", xnnpack=XnnpackConfig(weights_file=True))
    lowered = lower.lower(quantized, llm, metadata, backend, "t")
    (split / "llm.pte").write_bytes(lowered.buffer)
    lowered.write_tensor_data_to_file(str(split))
    assert (split / "llm.ptd").is_file()
    table = params["vocab_size"] * params["dim"]  # int8: one byte per entry
    assert program_bytes(split / "llm.pte") < program_bytes(inline) - 0.9 * table
    tokens = [1, 5, 7, 9, 11]
    ours = llm_logits(Program(split / "llm.pte"), tokens, 0)
    assert torch.equal(ours, llm_logits(Program(inline), tokens, 0))


def test_outlier_head_is_exact_in_fp32_and_keeps_the_head_weight(tiny_llm):
    from pipeline.llm import outliers

    hf, *_ = tiny_llm
    model = type(hf)(hf.config).eval()
    model.load_state_dict(hf.state_dict())
    with torch.no_grad():  # make channel 5 of the final hidden state massive
        model.model.norm.weight[5] = 80.0
    torch.manual_seed(0)
    samples = [torch.randint(3, 512, (16,))]
    assert outliers.find(model, samples, 1) == [5]
    head = torch.nn.Linear(64, 512, bias=False)
    wrapped = outliers.OutlierHead(head, [5], head.weight.detach()[:, [5]].clone())
    hidden = torch.randn(1, 3, 64)
    assert torch.allclose(wrapped(hidden), head(hidden), atol=1e-5)
    assert wrapped.head.weight is head.weight


def test_the_default_recipe_wraps_the_head_on_the_grid_path(tiny_llm):
    """q4_1_grid with head_outliers (the default): the plan's channel reaches the head."""
    from pipeline.llm import outliers

    quant = QuantConfig(name="t", method="torchao", activations="int8_dynamic", bits=4,
                        group_size=32, source_grid="q4_1", head=TensorQuant(bits=8),
                        embedding=TensorQuant(bits=8), head_outliers=1)
    with torch.no_grad():
        model = schemes.quantize_eager(_grid_model(tiny_llm)(), quant, {"head_outliers": [5]})
    assert isinstance(model.output, outliers.OutlierHead)
    assert model.output.mask[5] == 0 and model.output.mask.sum() == model.output.mask.numel() - 1


def test_a_gguf_says_which_of_its_grids_are_kept_and_which_are_rounded_again(tiny_cfg, tmp_path):
    """Q4_1/Q4_0 matrices are kept by their grid recipes; Q8_0 (and K-quants) are rounded again,
    because ExecuTorch 1.5.1's XNNPACK delegate takes grouped weights at 4 bits only."""
    from pipeline import sources
    from pipeline.llm import checkpoint, gguf_grids
    from tests import tiny_gguf

    tokenizer = sources.materialize(tiny_cfg.model.tokenizer_source)
    q8 = tiny_gguf.write(tmp_path / "q8.gguf", tokenizer, linears="Q8_0", layers=1)
    assert checkpoint.check_gguf(q8) == {"Q8_0": 8}  # seven linears and the embedding
    q41 = tiny_gguf.write(tmp_path / "q41.gguf", tokenizer, linears="Q4_1", layers=1)
    note = gguf_grids.note(checkpoint.check_gguf(q41))
    assert "Kept exactly by quant=q4_1_grid: Q4_1." in note and ": Q8_0 ×1." in note
    assert note.endswith("Q8_0's nearest XNNPACK grid is quant=8da8w (8 bits per row).")
    k_quants = gguf_grids.note({"Q4_K": 7, "Q6_K": 1})
    assert "Kept exactly by quant=gguf_grid: Q4_K." in k_quants
    assert "rounded a second time by the recipe (XNNPACK has no 8-bit grouped or K-quant weight " \
           "type to keep them): Q6_K ×1." in k_quants
    weight = checkpoint.load_pretrained(q8).model.layers[0].mlp.down_proj.weight
    with pytest.raises(BadInput, match="Q4_1 grid"):
        grid.decompose(weight, "down_proj", "q4_1")


def test_gguf_grid_keeps_each_q4_k_linear_of_the_file_code_for_code(tiny_cfg, tiny_llm, tmp_path):
    """A tiny GGUF of Q4_K linears (random super-blocks, tests/tiny_gguf.py) through
    transformers' dequantization and ExecuTorch's converter: every linear whose weight is the
    file's decodes carries the file's own codes and steps in the 4-bit kernel (none re-derived
    from floats); q and k, which the conversion permutes, find no grid and take 8 bits."""
    from pipeline import sources
    from pipeline.llm import checkpoint, export, families, gguf_grids
    from tests import tiny_gguf

    tokenizer = sources.materialize(tiny_cfg.model.tokenizer_source)
    path = tiny_gguf.write(tmp_path / "q4k.gguf", tokenizer, linears="Q4_K", layers=1,
                           dim=256, ffn=512)
    assert gguf_grids.write(path, tmp_path) == 7
    grids = gguf_grids.load(tmp_path)
    hf = checkpoint.load_pretrained(path)
    weights = families.to_meta(hf.config, hf.state_dict())
    _, _, llm, _ = tiny_llm
    model = export.build_eager(families.model_args(hf.config), llm, weights)
    quant = QuantConfig(name="t", method="torchao", activations="int8_dynamic", bits=8,
                        group_size=0, source_grid="gguf")
    with torch.no_grad():
        model = schemes.quantize_eager(model, quant, None, grids)
    source_model = export.build_eager(families.model_args(hf.config), llm, weights)
    known = grid.known(source_model, grids)
    layer = model.layers[0]
    for name in ("wq", "wk"):
        assert getattr(layer.attention, name).weight.target_dtype == torch.int8
    stacks = {"layers.0.attention.wv": (layer.attention.wv, ["wv"]),
              "layers.0.attention.wo": (layer.attention.wo, ["wo"]),
              "layers.0.feed_forward.w1_w3": (layer.feed_forward.w1_w3, ["w1", "w3"])}
    stacks["layers.0.feed_forward.w2"] = (layer.feed_forward.w2, ["w2"])
    for fqn, (linear, names) in stacks.items():
        assert isinstance(linear, grid.GridLinear), fqn
        parent = fqn.rsplit(".", 1)[0]
        parts = [known[f"{parent}.{n}"] for n in names]
        for name, (codes, scales, offsets) in zip(names, parts, strict=True):  # no rounding
            weight = weights[f"{parent}.{name}.weight"]
            rebuilt = codes.double().view(weight.shape[0], -1, 32) * scales.unsqueeze(-1) \
                + offsets.unsqueeze(-1)
            assert torch.allclose(rebuilt.view_as(weight).float(), weight, rtol=0, atol=1e-7)
        rows = sum(linear.sizes)
        assert torch.equal(linear.main.weight.qdata[:rows], torch.cat([p[0] for p in parts]))
        assert torch.equal(linear.main.weight.scale[:rows], torch.cat([p[1] for p in parts]))
    x = torch.randn(3, 256)
    source = torch.nn.functional.linear(x, weights["layers.0.attention.wo.weight"])
    error = (layer.attention.wo(x) - source).norm() / source.norm()
    assert error < 0.02, error  # int8 activations and the int8 offsets only


def test_gguf_grid_also_keeps_a_q4_1_grid_from_the_floats_and_refuses_a_model_on_none(tiny_llm):
    """The one recipe for any GGUF: Q4_1 (or Q4_0) linears keep their grid as q4_1_grid does, so
    a sweep across a Q4_1 and a K-quant model runs one recipe; a model on no 4-bit grid at all
    is told to take 8da8w."""
    from pipeline.llm import export

    quant = QuantConfig(name="gguf_grid", method="torchao", activations="int8_dynamic", bits=8,
                        group_size=0, source_grid="gguf")
    with torch.no_grad():
        model = schemes.quantize_eager(_grid_model(tiny_llm)(), quant, None, {})
    assert isinstance(model.layers[0].attention.wq_wk_wv, grid.GridLinear)
    assert isinstance(model.layers[1].feed_forward.w2, grid.GridLinear)
    _, params, llm, weights = tiny_llm
    with pytest.raises(BadInput, match=r"no linear of this model is on one; use quant=8da8w"):
        schemes.quantize_eager(export.build_eager(params, llm, weights), quant, None, {})
