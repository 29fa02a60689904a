"""Register a release with DVC and version it with a GTO tag, so `dvc artifacts get` can fetch it.

DVC's model registry is three things: an `artifacts:` entry in dvc.yaml (name → path, type,
desc), the bundle tracked by DVC (`releases/<name>.dvc`), and GTO's annotated `<name>@vX.Y.Z`
git tag on a commit holding both; `dvc artifacts get <repo> <name> --rev vX.Y.Z` resolves that
tag and reads the path at that commit. Tagging goes through GTO's own API (it bumps the patch of
the highest version already tagged). dvc.yaml is edited with ruamel.yaml round-trip in the
file's own indentation, so its comments and layout survive.
"""

from __future__ import annotations

import io
import re
import shutil
import subprocess
from pathlib import Path

from pipeline import artifacts
from pipeline.bundle import RELEASES
from pipeline.errors import BadInput

DVC_YAML = "dvc.yaml"


def check_name(name: str) -> None:
    """A release name is a folder name and a GTO artifact name: lowercase-friendly, no slash."""
    from gto.constants import assert_name_is_valid
    from gto.exceptions import ValidationError

    try:
        assert_name_is_valid(name)
    except ValidationError:
        name_ok = False
    else:
        name_ok = "/" not in name
    if not name_ok:
        raise BadInput(f"--name={name!r} is not a valid release name: use letters, digits, '-' "
                       "and '_', starting and ending with a letter or digit.")


def registry_files(name: str) -> list[str]:
    return [DVC_YAML, f"{RELEASES}/{name}.dvc", f"{RELEASES}/.gitignore"]


def _git(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)


def check_git(root: Path, name: str) -> None:
    """Tagging needs git and clean registry files; say so before any work rather than after."""
    hint = "pass --no-tag to promote without git writes"
    if shutil.which("git") is None:
        raise BadInput(f"git is not installed, so the release cannot be tagged; {hint}.")
    if _git(root, "rev-parse", "--git-dir").returncode != 0:
        raise BadInput(f"{root} is not a git repository, so the release cannot be tagged; {hint}.")
    dirty = _git(root, "status", "--porcelain", "--", *registry_files(name)).stdout.splitlines()
    if dirty:
        raise BadInput(f"{dirty[0][3:]} has uncommitted changes; commit or stash them first, "
                       f"or {hint}.")


def add_artifact(root: Path, name: str, desc: str) -> None:
    """Write `artifacts: {name: {path, type: model, desc}}` into dvc.yaml, keeping comments."""
    from ruamel.yaml import YAML

    yaml = YAML()
    yaml.indent(mapping=2, sequence=4, offset=2)
    yaml.width = 4096
    yaml.preserve_quotes = True
    path = root / DVC_YAML
    data = yaml.load(path.read_text()) if path.is_file() else None
    data = {} if data is None else data
    entries = data.setdefault("artifacts", {})
    entries[name] = {"path": f"{RELEASES}/{name}", "type": "model", "desc": desc}
    text = io.StringIO()
    yaml.dump(data, text)
    artifacts.atomic_write_text(path, text.getvalue())


def track(root: Path, name: str) -> None:
    """`dvc add releases/<name>`: the bundle goes to the DVC cache, its pointer beside it."""
    from dvc.exceptions import NotDvcRepoError
    from dvc.repo import Repo

    try:
        repo = Repo(str(root))
    except NotDvcRepoError:
        raise BadInput(f"{root} is not a DVC project (`dvc init`), so the release cannot be "
                       "registered.") from None
    with repo:
        repo.scm_context.quiet = True  # promote commits these files itself, or says it did not
        repo.add(f"{RELEASES}/{name}")


def commit_and_tag(root: Path, name: str, message: str) -> tuple[str, bool]:
    """Commit the registry files if they changed and tag the commit; (tag, whether it is new).

    A bundle identical to the latest version's (same `.dvc` pointer) keeps that version.
    """
    import gto.api

    files = registry_files(name)
    latest = _latest_tag(root, name)
    pointer = (root / files[1]).read_text()
    if latest and _git(root, "show", f"{latest}:{files[1]}").stdout == pointer:
        return latest, False
    _checked(root, "add", "--", *files)
    if _git(root, "diff", "--cached", "--quiet", "--", *files).returncode != 0:
        _checked(root, "commit", "-q", "-m", message, "--", *files)
    return gto.api.register(str(root), name, "HEAD", message=message).tag, True


def _latest_tag(root: Path, name: str) -> str | None:
    tags = _git(root, "tag", "--list", f"{name}@v*").stdout.split()
    return max(tags, key=_version_key) if tags else None


def _version_key(tag: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", tag.rsplit("@v", 1)[-1]))


def _checked(root: Path, *args: str) -> None:
    result = _git(root, *args)
    if result.returncode != 0:
        detail = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise BadInput(f"git {args[0]} failed while registering the release: {detail}")
