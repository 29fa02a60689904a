"""Offline lm-eval tasks built from text no one here wrote, as local YAML + JSONL.

- `edgerag_pydoc_cloze`: the last word of sentences from the held-out evaluation split of the
  Python language reference, against three last words of other sentences.
- `edgerag_stdlib_docstrings`: which stdlib function a docstring's first line documents, against
  three other functions of the same pool.

Both are `multiple_choice` tasks scored with lm-eval's built-in `acc`; choices are drawn with a
seeded generator so every build writes the same bytes.
"""

from __future__ import annotations

import importlib
import inspect
import json
import random
import re
from pathlib import Path

DOCSTRING_MODULES = (
    "json", "os.path", "re", "string", "textwrap", "shutil", "functools", "itertools",
    "collections", "base64", "binascii", "calendar", "difflib", "fnmatch", "glob", "gzip",
    "heapq", "html", "ipaddress", "keyword", "locale", "operator", "pathlib", "pickle",
    "platform", "posixpath", "quopri", "random", "secrets", "shlex", "statistics", "struct",
    "tempfile", "urllib.parse", "uuid", "zlib", "bisect", "copy", "csv", "datetime",
)
_SENTENCE = re.compile(r"(?<=[.!?])\s+")
_WORD = re.compile(r"^[A-Za-z]{4,}$")

YAML = """task: {task}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{context}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{label}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


def _choices(rng: random.Random, answer: str, pool: list[str]) -> tuple[list[str], int]:
    distractors = rng.sample(sorted(set(pool) - {answer}), 3)
    choices = [answer, *distractors]
    rng.shuffle(choices)
    return choices, choices.index(answer)


def cloze_docs(texts: list[str], limit: int, seed: int) -> list[dict]:
    candidates = []
    for text in texts:
        for sentence in _SENTENCE.split(" ".join(text.split())):
            words = sentence.rstrip(".!?").split(" ")
            if 8 <= len(words) <= 40 and _WORD.match(words[-1]) and sentence.endswith("."):
                candidates.append((" ".join(words[:-1]), words[-1]))
    rng = random.Random(seed)
    pool = [answer for _, answer in candidates]
    picked = rng.sample(candidates, min(limit, len(candidates)))
    docs = []
    for context, answer in picked:
        choices, label = _choices(rng, answer, pool)
        docs.append({"context": context, "choices": [" " + c for c in choices], "label": label})
    return docs


def _documented_functions() -> list[tuple[str, str]]:
    found = []
    for module_name in DOCSTRING_MODULES:
        module = importlib.import_module(module_name)
        for name, value in sorted(vars(module).items()):
            if name.startswith("_") or not (inspect.isfunction(value) or inspect.isbuiltin(value)):
                continue
            first = (inspect.getdoc(value) or "").strip().splitlines()
            line = first[0].strip() if first else ""
            if len(line) >= 25 and name.lower() not in line.lower():
                found.append((f"{module_name}.{name}", line))
    return sorted(set(found))


def docstring_docs(limit: int, seed: int) -> list[dict]:
    functions = _documented_functions()
    rng = random.Random(seed)
    pool = [name for name, _ in functions]
    docs = []
    for name, line in rng.sample(functions, min(limit, len(functions))):
        choices, label = _choices(rng, name, pool)
        docs.append({"context": f"Python documentation: {line}\nThis describes the function",
                     "choices": [" " + c for c in choices], "label": label})
    return docs


def write(out: Path, evaluation_texts: list[str], limit: int, seed: int,
          data_prefix: str) -> dict[str, int]:
    """Write each task's JSONL and YAML into `out`; YAML points at `data_prefix/<file>`."""
    tasks = {
        "edgerag_pydoc_cloze": cloze_docs(evaluation_texts, limit, seed),
        "edgerag_stdlib_docstrings": docstring_docs(limit, seed),
    }
    for task, docs in tasks.items():
        with open(out / f"{task}.jsonl", "w", encoding="utf-8") as handle:
            for doc in docs:
                handle.write(json.dumps(doc, sort_keys=True) + "\n")
        (out / f"{task}.yaml").write_text(YAML.format(task=task,
                                                      data=f"{data_prefix}/{task}.jsonl"))
    return {task: len(docs) for task, docs in tasks.items()}
