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
# Manifests, error exits, progress bars and config loading and checking: they shape how a stage
# runs, not what it writes (the config's values reach stages through `params:`).
PLUMBING = {"pipeline/artifacts.py", "pipeline/errors.py", "pipeline/progress.py",
            "pipeline/config.py", "pipeline/params_file.py", "pipeline/llm/checks.py",
            "pipeline/declared.py"}
DVC_YAML = yaml.safe_load((ROOT / "dvc.yaml").read_text())
STAGES = DVC_YAML["stages"]


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

    from pipeline import conf, declared, params_file

    (tmp_path / "dvc.yaml").write_text(
        "stages:\n  probe:\n    cmd: x\n    params:\n      - eval.ppl_window\n"
        "      - model.executorch\n      - quant\n")
    cfg = params_file.validate(conf.compose(["experiment=tiny"]), executorch=False)
    keys = declared.params("probe", tmp_path / "dvc.yaml")
    declared.restrict(cfg, "probe", keys)
    assert cfg.eval.ppl_window == 64 and cfg.quant.group_size == 32  # declared, or inside one
    assert "export" in cfg.model.executorch
    for read in (lambda: cfg.eval.tasks_limit, lambda: cfg.model.name,
                 lambda: dataclasses.replace(cfg.eval, ppl_window=32)):
        with pytest.raises(declared.UndeclaredParam, match=r"stage probe read (eval|model)\."):
            read()
    assert declared.view(cfg, "probe", tmp_path / "dvc.yaml")["eval.ppl_window"] == 64


# --- One name per artifact: pipeline/layout.py names every folder and fixed file once. ---

def _layout_folders() -> dict[str, str]:
    """layout's folder constants: attribute name -> path."""
    from pipeline import layout

    return {name: value for name, value in vars(layout).items()
            if name.isupper() and isinstance(value, str) and value in layout.OUTPUT.values()}


def test_dvc_yaml_lists_each_stages_folder_as_layout_names_it():
    from pipeline import layout

    assert set(STAGES) == set(layout.OUTPUT)
    for name, stage in STAGES.items():
        outs = [out if isinstance(out, str) else next(iter(out)) for out in stage["outs"]]
        assert outs == [layout.OUTPUT[name], f"{layout.RUNS}/{name}.json"], name
    assert DVC_YAML["metrics"] == [layout.RUN_METRICS]
    assert all(next(iter(plot)).startswith(f"{layout.EVAL_LLM}/") for plot in DVC_YAML["plots"])


@pytest.mark.parametrize("name", sorted(STAGES))
def test_a_stage_requires_exactly_the_folders_its_entry_declares(name):
    from pipeline import layout

    folders = _layout_folders()
    tree = ast.parse((ROOT / "stages" / f"{name}.py").read_text())
    named = {folders[node.attr] for node in ast.walk(tree)
             if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
             and node.value.id == "layout" and node.attr in folders}
    named |= {f"{layout.RUNS}/{node.args[0].value}.json" for node in ast.walk(tree)
              if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr == "read_record"}  # another stage's run record
    named.discard(layout.OUTPUT[name])  # its own output, which it writes
    declared = {dep for dep in STAGES[name].get("deps", []) if dep.startswith("data/")}
    assert named == declared, f"stages/{name}.py reads {sorted(named)}, dvc.yaml {sorted(declared)}"


def _docstrings(tree: ast.AST) -> set[int]:
    return {id(node.body[0].value) for node in ast.walk(tree)
            if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef)) and node.body
            and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}


# Strings equal to an artifact's name by coincidence: another tool's own file, in its own folder.
NOT_OURS = {("bench/export_llm.py", "params.json")}  # export_llm's input, in the bench's work dir


def test_no_module_spells_an_artifact_path_itself():
    from pipeline import layout

    names = {value for name, value in vars(layout).items()
             if name.isupper() and isinstance(value, str)} - {layout.DATA}
    found = []
    for path in sorted([*ROOT.glob("pipeline/**/*.py"), *ROOT.glob("stages/*.py"),
                        *ROOT.glob("bench/*.py")]):
        if path.name == "layout.py":
            continue
        tree = ast.parse(path.read_text())
        skip = _docstrings(tree)
        found += [f"{path.relative_to(ROOT)}:{node.lineno} {node.value!r}"
                  for node in ast.walk(tree)
                  if isinstance(node, ast.Constant) and isinstance(node.value, str)
                  and id(node) not in skip
                  and (str(path.relative_to(ROOT)), node.value) not in NOT_OURS
                  and (node.value in names or node.value.startswith(f"{layout.DATA}/"))]
    assert not found, f"name these from pipeline/layout.py: {found}"
