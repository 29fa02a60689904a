"""dvc.yaml's deps cover the code each stage runs, or `dvc repro` serves stale artifacts.

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
            "pipeline/config.py"}
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
