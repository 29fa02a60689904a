"""Config composition and validation: bad values fail before any work, in one sentence."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from pipeline import conf, config, params_file
from pipeline.errors import BadInput
from tests.conftest import REPO


def _validate(*overrides: str) -> config.Config:
    return params_file.validate(conf.compose(list(overrides)))


def test_default_composes_to_the_committed_params(tmp_path):
    out = tmp_path / "params.yaml"
    subprocess.run([sys.executable, "-m", "pipeline.cli", "configure", "--output", str(out)],
                   check=True, cwd=REPO, capture_output=True)
    generated = OmegaConf.load(out)
    committed = subprocess.run(["git", "show", "HEAD:params.yaml"], cwd=REPO, check=True,
                               capture_output=True, text=True).stdout
    assert generated == OmegaConf.create(committed)  # what a clone gets, not this working tree
    assert generated.quant.name == "q4_1_grid" and generated.model.name.startswith("smollm2")


def test_group_size_that_does_not_divide_576_is_refused():
    with pytest.raises(BadInput, match=r"quant.group_size=128 .* allowed: 0, 32, 64"):
        _validate("quant.group_size=128")


def test_a_logits_margin_below_one_is_refused():
    with pytest.raises(BadInput, match=r"quant.pt2e.logits_margin=0.5 would narrow"):
        _validate("quant=qnn_16a4w", "backend=qnn", "quant.pt2e.logits_margin=0.5")


def test_the_qnn_recipes_choices_are_keys_of_their_yaml_and_checked():
    """Observer and 16a8w choices live in conf/quant (qnn_16a4w_block inherits them)."""
    block = _validate("quant=qnn_16a4w_block", "backend=qnn").quant.pt2e
    assert (block.act_observer, block.keep_16a8w) == ("minmax", ["attention_matmul", "head"])
    assert _validate("quant=qnn_16a8w", "backend=qnn").quant.pt2e.keep_16a8w == []
    with pytest.raises(BadInput, match=r"keep_16a8w\[\]='mlp' is not allowed; choose one of: "
                                       r"attention_matmul, head"):
        _validate("quant=qnn_16a4w", "backend=qnn", "quant.pt2e.keep_16a8w=[mlp]")
    with pytest.raises(BadInput, match=r"act_observer='minmax' is not allowed with "
                                       r"quant.pt2e.quantizer=xnnpack; choose one of: default"):
        _validate("quant=xnnpack_8a8w", "+quant.pt2e.act_observer=minmax")
    with pytest.raises(BadInput, match=r"keep_16a8w is for quant.pt2e.quantizer=qnn only"):
        _validate("quant=xnnpack_8a8w", "+quant.pt2e.keep_16a8w=[head]")


def test_group_size_allowed_for_tiny_widths():
    assert _validate("experiment=tiny", "quant.group_size=64").quant.group_size == 64


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("quant=nope", r"quant=nope is not a known choice; choose one of: .*8da4w_g32"),
        ("quant.colour=red", r"quant.colour is not a known setting"),
        ("quant.bits=3", r"quant.bits=3 is not allowed; choose one of: 4, 8"),
        ("quant.method=magic", r"quant.method='magic' is not allowed"),
        ("calibration.seq_len=abc", r"calibration.seq_len='abc' is not valid"),
        ("calibration.eval_fraction=1.5", r"eval_fraction=1.5 must be between 0 and 1"),
        ("backend.name=tpu", r"backend.name='tpu' is not allowed"),
        ("model=hf_smollm2_135m", r"model.source.revision must be set"),
    ],
)
def test_bad_values_name_the_key(override, message):
    with pytest.raises(BadInput, match=message):
        _validate(override)


def test_unknown_key_in_params_file_is_named(tmp_path):
    params = OmegaConf.load(REPO / "params.yaml")
    params.quant["grup_size"] = 32
    path = tmp_path / "params.yaml"
    OmegaConf.save(params, path)
    with pytest.raises(BadInput, match=r"quant.grup_size is not a known setting; allowed keys "
                                       r"there: name, method, .*group_size"):
        params_file.load(path)


def _in_a_fresh_interpreter(code: str, params: Path) -> subprocess.CompletedProcess:
    """`code` run where nothing is imported yet, with a params.yaml path as sys.argv[1]."""
    return subprocess.run([sys.executable, "-c", code, str(params)], cwd=REPO,
                          capture_output=True, text=True)


def test_executorch_section_is_checked_by_llmconfig(tmp_path):
    raw = OmegaConf.create(OmegaConf.to_container(conf.compose([])))
    raw.model.executorch.export["max_seq_lenght"] = 5
    OmegaConf.save(raw, tmp_path / "params.yaml")
    # What configure and sweep run: ExecuTorch's own LlmConfig checks the section, without its
    # package's torchao and dynamo (3 s).
    done = _in_a_fresh_interpreter(
        "import sys; from omegaconf import OmegaConf; from pipeline import errors, params_file\n"
        "try: params_file.validate(OmegaConf.load(sys.argv[1]))\n"
        "except errors.BadInput as error: print(error)\n"
        "print(sorted(m for m in ('torch', 'executorch') if m in sys.modules))",
        tmp_path / "params.yaml")
    assert done.stdout.startswith("model.executorch.export.max_seq_lenght is not valid for "
                                  "ExecuTorch's LlmConfig: Key 'max_seq_lenght' not in")
    assert done.stdout.endswith("\n[]\n"), done.stdout + done.stderr
    # A stage loads params.yaml without this section's check or ExecuTorch; the LLM stages check
    # it where they read it, through ExecuTorch's real import.
    done = _in_a_fresh_interpreter(
        "import sys; from pipeline import params_file; from pipeline.llm import checks; "
        "cfg = params_file.load(sys.argv[1]); "
        "print(sorted(m for m in ('torch', 'executorch') if m in sys.modules)); "
        "checks.llm_config(cfg.model.executorch)", tmp_path / "params.yaml")
    assert done.stdout == "[]\n" and done.returncode == 1
    assert "BadInput: model.executorch.export.max_seq_lenght is not valid" in done.stderr


def test_the_section_is_still_checked_if_executorch_moves_its_llm_config_file(monkeypatch):
    from executorch.extension.llm.export.config.llm_config import LlmConfig

    from pipeline.llm import checks

    monkeypatch.setattr(checks, "LLM_CONFIG_FILE", "moved/elsewhere.py")
    assert checks._llm_config_class.__wrapped__() is LlmConfig  # the real import, slower


def test_cli_exits_2_with_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "configure", "quant.group_size=128",
         "--output", str(tmp_path / "p.yaml")],
        cwd=REPO, capture_output=True, text=True,
    )
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert result.stderr.startswith("edgerag: quant.group_size=128")
    assert not (tmp_path / "p.yaml").exists()
