"""dvc.yaml's deps cover the code each stage runs, and its params what each stage reads, or
`dvc repro` serves stale artifacts.

A stage's code is its `stages/<name>.py` plus every `pipeline` module it imports, directly or
through another, at module level or inside a function. Each must be a dep (a file or a folder
holding it). Plumbing that cannot change an artifact's bytes is exempt.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
# Manifests, error exits, progress bars and config loading: they shape how a stage runs, not what
# it writes (the config's values reach stages through `params:`).
PLUMBING = {"pipeline/artifacts.py", "pipeline/errors.py", "pipeline/progress.py",
            "pipeline/config.py", "pipeline/declared.py"}
STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def _module_file(name: str) -> Path | None:
    for candidate in (ROOT / f"{name.replace('.', '/')}.py",
                      ROOT / name.replace(".", "/") / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imported(path: Path) -> set[Path]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pipeline"):
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names if alias.name.startswith("pipeline")]
        else:
            continue
        found.update(f for f in map(_module_file, names) if f is not None)
    return found


def _code_of(deps: list[str]) -> set[str]:
    todo = [ROOT / d for d in deps if d.startswith("stages/") and d.endswith(".py")]
    seen: set[Path] = set()
    while todo:
        path = todo.pop()
        if path not in seen:
            seen.add(path)
            todo.extend(_imported(path))
    return {str(p.relative_to(ROOT)) for p in seen if p.name != "__init__.py"}


@pytest.mark.parametrize("name", sorted(STAGES))
def test_every_module_a_stage_runs_is_one_of_its_deps(name):
    deps = STAGES[name].get("deps", [])
    missing = sorted(
        f for f in _code_of(deps) - PLUMBING
        if not any(f == d or f.startswith(d.rstrip("/") + "/") for d in deps)
    )
    assert not missing, f"{name} runs {missing} without depending on them"


def test_a_stage_that_reads_an_undeclared_param_is_refused(tmp_path):
    """The suite runs every stage so (tests/conftest.py); here, what the guard refuses."""
    import dataclasses

    from pipeline import config, declared

    (tmp_path / "dvc.yaml").write_text(
        "stages:\n  probe:\n    cmd: x\n    params:\n      - eval.ppl_window\n"
        "      - model.executorch\n      - quant\n")
    cfg = config.validate(config.compose(["experiment=tiny"]), executorch=False)
    keys = declared.params("probe", tmp_path / "dvc.yaml")
    declared.restrict(cfg, "probe", keys)
    assert cfg.eval.ppl_window == 64 and cfg.quant.group_size == 32  # declared, or inside one
    assert "export" in cfg.model.executorch
    for read in (lambda: cfg.eval.tasks_limit, lambda: cfg.model.name,
                 lambda: dataclasses.replace(cfg.eval, ppl_window=32)):
        with pytest.raises(declared.UndeclaredParam, match=r"stage probe read (eval|model)\."):
            read()
    assert declared.view(cfg, "probe", tmp_path / "dvc.yaml")["eval.ppl_window"] == 64
