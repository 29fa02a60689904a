"""What a stage declares in dvc.yaml (`params:`), and a config that holds a stage to it.

DVC re-runs a stage when a declared param changes, and only then: a stage that reads a value it
does not declare serves stale artifacts when that value changes. `restrict` wraps the typed
config so that reading any other value raises `UndeclaredParam`, naming the key; stages run so
when `EDGERAG_STRICT_PARAMS=1` (the test suite runs every stage this way).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import sys
from pathlib import Path
from typing import Any

STRICT_ENV = "EDGERAG_STRICT_PARAMS"


class UndeclaredParam(RuntimeError):
    """A stage read a config value its dvc.yaml entry does not list under `params:`. Not an
    AttributeError, so `hasattr` and `getattr(..., default)` cannot swallow it."""


def all_params(dvc_file: str | Path = "dvc.yaml") -> dict[str, list[str]]:
    """Every stage's dotted keys under `params:`, in dvc.yaml's order (a key covers everything
    below it; a params file entry, which is a mapping, is not a key)."""
    import yaml

    stages = yaml.safe_load(Path(dvc_file).read_text()).get("stages", {})
    return {stage: [key for key in (body or {}).get("params") or [] if isinstance(key, str)]
            for stage, body in stages.items()}


def params(stage: str, dvc_file: str | Path = "dvc.yaml") -> list[str]:
    """The dotted keys `stage` lists under `params:`."""
    return all_params(dvc_file).get(stage, [])


def running_stage() -> str | None:
    """The stage this process runs (`python -m stages.<name>`), or None outside a stage."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    name = getattr(spec, "name", "") or ""
    return name.split(".", 1)[1] if name.startswith("stages.") else None


def strict() -> bool:
    return os.environ.get(STRICT_ENV) == "1"


def _allowed(path: str, declared: list[str]) -> bool:
    """Inside a declared key, or a container on the way to one."""
    return any(path == key or path.startswith(key + ".") or key.startswith(path + ".")
               for key in declared)


def restrict(cfg: Any, stage: str, declared: list[str]) -> Any:
    """`cfg` (a tree of dataclasses), changed in place so that reading a field outside
    `declared` raises UndeclaredParam. Values inside a declared key are left as they are."""
    paths: dict[int, str] = {}

    def guard(cls: type) -> type:
        def __getattribute__(self: Any, name: str) -> Any:
            value = object.__getattribute__(self, name)
            if name in cls.__dataclass_fields__:
                path = f"{paths[id(self)]}{name}"
                if not _allowed(path, declared):
                    raise UndeclaredParam(
                        f"stage {stage} read {path}, which its dvc.yaml entry does not declare "
                        "under params:; add it there, or DVC serves stale artifacts when it "
                        "changes")
            return value

        return type(f"Declared{cls.__name__}", (cls,), {"__getattribute__": __getattribute__})

    guards = functools.cache(guard)

    def walk(node: Any, prefix: str) -> None:
        if not dataclasses.is_dataclass(node) or isinstance(node, type):
            return
        if any(prefix == key + "." or prefix.startswith(key + ".") for key in declared):
            return  # wholly declared: nothing below it can be undeclared
        paths[id(node)] = prefix
        for item in dataclasses.fields(node):
            walk(object.__getattribute__(node, item.name), f"{prefix}{item.name}.")
        object.__setattr__(node, "__class__", guards(type(node)))

    walk(cfg, "")
    return cfg


def view(cfg: Any, stage: str, dvc_file: str | Path = "dvc.yaml") -> dict[str, Any]:
    """The values `stage` declares, by key, as plain JSON (for its manifest)."""
    from pipeline.config import as_dict

    return {key: as_dict(functools.reduce(_child, key.split("."), cfg))
            for key in params(stage, dvc_file)}


def _child(node: Any, name: str) -> Any:
    return node[name] if isinstance(node, dict) else getattr(node, name)
