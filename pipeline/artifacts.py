"""Atomic artifact directories with manifests.

A stage writes into a temporary sibling directory; only when it finishes is `manifest.json`
written and the directory renamed into place. A crash, a kill or bad input therefore never
leaves a directory that looks finished (a killed writer's hidden temporary directory is removed
by the next writer of the same artifact). Readers call `require()`, which re-hashes every file.

The manifest describes the bytes (hashes, config, inputs, versions), so two builds of the same
bytes write the same manifest and DVC sees the same output hash. What differs from one build to
the next (wall time, peak RSS, thread count, seeds) goes to the stage's run record,
`data/runs/<stage>.json`, a separate output in dvc.yaml.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from pipeline import layout
from pipeline.errors import BadInput

FORMAT_VERSION = 1
_TRACKED_PACKAGES = (
    "edgerag", "torch", "executorch", "torchao", "transformers", "gguf", "tokenizers",
    "usearch", "dvc", "hydra-core", "omegaconf", "lm_eval",
)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def peak_rss_mb() -> float:
    """Peak resident set size of this process and its waited-for children, in MiB."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return round(max(own, children) / 1024.0, 1)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write a single file via a temporary sibling and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    """The process umask (mkstemp/mkdtemp make private files; finished ones should not be)."""
    current = os.umask(0)
    os.umask(current)
    return current


@dataclass
class Output:
    """The temporary directory a stage writes into, plus notes for its manifest and timings
    (figures that differ from one build of the same bytes to the next) for its run record."""

    path: Path
    notes: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, Any] = field(default_factory=dict)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def note(self, key: str, value: Any) -> None:
        self.notes[key] = value


@dataclass
class Artifact:
    """A verified, finished artifact directory."""

    path: Path
    manifest: dict[str, Any]

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    @property
    def manifest_sha256(self) -> str:
        return sha256_file(self.path / layout.MANIFEST)


def _file_table(root: Path) -> dict[str, dict[str, Any]]:
    table = {}
    for file in sorted(p for p in root.rglob("*") if p.is_file() and p.name != layout.MANIFEST):
        rel = file.relative_to(root).as_posix()
        table[rel] = {"sha256": sha256_file(file), "bytes": file.stat().st_size}
    return table


def run_record(stage: str) -> Path:
    """Where a stage's volatile facts go (a separate output in dvc.yaml, outside the artifact)."""
    return Path(layout.RUNS) / f"{stage}.json"


def process_facts(started: float) -> dict[str, Any]:
    """How this process ran: time, memory, and what decides whether a rebuild gives the same
    bytes (threads, seeds). Volatile by nature, so never part of a manifest."""
    facts: dict[str, Any] = {"wall_time_s": round(time.monotonic() - started, 2),
                             "peak_rss_mb": peak_rss_mb(),
                             "python_hash_seed": os.environ.get("PYTHONHASHSEED", "random")}
    torch = sys.modules.get("torch")  # only a stage that ran torch has torch settings to record
    if torch is not None:
        facts.update(torch_threads=torch.get_num_threads(), torch_seed=torch.initial_seed(),
                     torch_deterministic_algorithms=torch.are_deterministic_algorithms_enabled())
    return facts


def _is_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        pass
    return True


def _remove_abandoned(final: Path) -> None:
    """Delete temporary siblings left by writers of `final` that were killed (their pid is gone)."""
    for stale in final.parent.glob(f".{final.name}.*-*"):
        kind, _, rest = stale.name.removeprefix(f".{final.name}.").partition("-")
        pid = rest.split("-")[0]
        if kind in ("tmp", "old") and pid.isdigit() and not _is_running(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux's renameat2 RENAME_EXCHANGE); False where unsupported."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def replace_dir(new: Path, final: Path) -> None:
    """Put the finished directory `new` at `final`. Swapped in one step where the system can, so
    a reader or a kill never finds `final` missing; elsewhere, two renames a moment apart."""
    if final.exists() and _exchange(new, final):
        shutil.rmtree(new, ignore_errors=True)  # it holds the previous contents now
        return
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, old)
        os.replace(new, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(new, final)


@contextmanager
def writer(
    out_dir: str | Path,
    *,
    stage: str,
    config: Any,
    inputs: list[Artifact] | None = None,
    byte_identical: bool | None = None,
    record: str | Path | None = None,
) -> Iterator[Output]:
    """Yield a temporary directory; on success write its manifest and rename it to `out_dir`.

    `byte_identical`: True when two clean builds are known to write the same files
    (tests/test_reproducibility.py checks it), False when they are known to differ (timings in
    evaluations), None when not checked. `record`: the file that receives this run's
    `process_facts` and the stage's `timings` once the artifact is in place (a stage's
    `run_record`), tied to the artifact by its manifest's sha256.
    """
    started = time.monotonic()
    with staged(Path(out_dir)) as tmp:
        out = Output(tmp)
        yield out
        manifest = {
            "format_version": FORMAT_VERSION,
            "stage": stage,
            "files": _file_table(tmp),
            "config": config,
            "inputs": {str(a.path): a.manifest_sha256 for a in inputs or []},
            "versions": package_versions(),
            "reproducibility": {"byte_identical": byte_identical},
            "notes": out.notes,
        }
        (tmp / layout.MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    if record is not None:
        facts = {"stage": stage, "manifest_sha256": sha256_file(Path(out_dir) / layout.MANIFEST),
                 **process_facts(started), **out.timings}
        atomic_write_text(record, json.dumps(facts, indent=2, sort_keys=True) + "\n")


@contextmanager
def staged(final: Path) -> Iterator[Path]:
    """A hidden sibling of `final` to fill; put at `final` in one step when the block ends,
    removed if it raises (or left, named by this pid, for the next writer to clear if killed).
    The manifest is the caller's to write: a stage's own, or a release's verbatim (deltas)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned(final)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-{os.getpid()}-", dir=final.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
        replace_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def read_record(stage: str, artifact: Artifact) -> dict[str, Any]:
    """A stage's run record if it describes this very artifact, else {} (rebuilt since)."""
    path = run_record(stage)
    if not path.is_file():
        return {}
    facts = json.loads(path.read_text())
    return facts if facts.get("manifest_sha256") == artifact.manifest_sha256 else {}


def read_manifest(path: str | Path) -> dict[str, Any]:
    root = Path(path)
    manifest_path = root / layout.MANIFEST if root.is_dir() else root
    if not manifest_path.is_file():
        raise BadInput(f"{root} has no {layout.MANIFEST}: it is missing or was never finished.")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise BadInput(f"{manifest_path} is not valid JSON.") from None
    _check_shape(manifest, manifest_path)
    version = manifest.get("format_version")
    if not isinstance(version, int):
        raise BadInput(f"{manifest_path} has no format_version: edgerag did not write it.")
    if version > FORMAT_VERSION:
        raise BadInput(
            f"{manifest_path} has format version {version!r}; this edgerag reads up to "
            f"{FORMAT_VERSION}: upgrade edgerag."
        )
    return manifest


def _check_shape(manifest: Any, path: Path) -> None:
    """A manifest is an object whose `files` map names to `{sha256, bytes}` and whose
    `config`, `notes` and `inputs` are objects: anything else was not written by edgerag."""
    problem = None
    if not isinstance(manifest, dict):
        problem = "is not a JSON object"
    elif not isinstance(manifest.get("files", {}), dict):
        problem = "has `files` that is not an object"
    else:
        for key in ("config", "notes", "inputs"):
            if not isinstance(manifest.get(key, {}), dict):
                problem = f"has `{key}` that is not an object"
                break
        for name, entry in manifest.get("files", {}).items():
            if problem:
                break
            if not (isinstance(entry, dict) and isinstance(entry.get("sha256"), str)
                    and isinstance(entry.get("bytes"), int)):
                problem = f"lists {name!r} without its sha256 and bytes"
    if problem:
        raise BadInput(f"{path} {problem}: edgerag did not write it; rebuild or re-fetch it.")


def inside(root: Path, rel: str) -> Path:
    """`root / rel`, refused unless it stays in `root`: a manifest naming `../x`, `/etc/x` or a
    symlink leading out would otherwise make verify hash (and ask open) any file on the machine."""
    file = root / rel
    if Path(rel).is_absolute() or ".." in Path(rel).parts or not file.resolve().is_relative_to(
            root.resolve()):
        raise BadInput(
            f"{root / layout.MANIFEST} names {rel!r}, a path outside {root}; refusing it.")
    return file


def _check_files(root: Path, manifest: dict[str, Any],
                 digest_of: Callable[[Path, str], str]) -> None:
    """Every file the manifest lists is there with its size and sha256 (`digest_of(file, rel)`
    reads it once), and no other file is: any difference is an error naming the file."""
    listed = manifest.get("files", {})
    for rel, entry in listed.items():
        file = inside(root, rel)
        if not file.is_file():
            raise BadInput(f"{file} is listed in {root / layout.MANIFEST} but missing.")
        if file.stat().st_size != entry["bytes"] or digest_of(file, rel) != entry["sha256"]:
            raise BadInput(f"{file} does not match its sha256 in {root / layout.MANIFEST}.")
    extra = sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                   if p.is_file() and p.name != layout.MANIFEST
                   and p.relative_to(root).as_posix() not in listed)
    if extra:
        raise BadInput(f"{root / extra[0]} is not listed in {root / layout.MANIFEST}.")


def verify(path: str | Path) -> Artifact:
    """Re-hash every file the manifest lists; any difference is an error naming the file."""
    root = Path(path)
    manifest = read_manifest(root)
    _check_files(root, manifest, lambda file, _rel: sha256_file(file))
    return Artifact(root, manifest)


def copy_verified(path: str | Path, dest: Path) -> Artifact:
    """`verify`, reading each file once while copying it into `dest`: what a long-lived reader
    (an `ask` session) opens is this private copy, which nothing else replaces or truncates
    under its memory maps; the errors name the original's files."""
    root = Path(path)
    if not (root / layout.MANIFEST).is_file():
        read_manifest(root)  # its sentence for a folder without one
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(root / layout.MANIFEST, dest / layout.MANIFEST)  # the bytes read below
    manifest = read_manifest(dest)

    def copied(file: Path, rel: str) -> str:
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        with open(file, "rb") as source, open(target, "wb") as copy:
            while block := source.read(1 << 20):
                digest.update(block)
                copy.write(block)
        return digest.hexdigest()

    _check_files(root, manifest, copied)
    return Artifact(dest, manifest)


def require(path: str | Path) -> Artifact:
    """A stage's input: it must exist and be intact."""
    root = Path(path)
    if not root.is_dir():
        raise BadInput(f"{root} does not exist; run the stage that builds it (`dvc repro`).")
    return verify(root)
