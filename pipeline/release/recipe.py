"""`edgerag release`: what `make release` runs, in one place, so CI can run exactly that.

Build whatever params.yaml says with `dvc repro` (only what changed re-runs), promote the run the
release rule picks, re-verify the release as a phone would receive it, and say how to ask it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from pipeline import artifacts
from pipeline.errors import BadInput
from pipeline.release import promote


def repro(root: Path) -> None:
    """`dvc repro` with this interpreter's folder first on PATH: stages call `python`."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run([sys.executable, "-m", "dvc", "repro", "dvc.yaml"], cwd=root, env=env)
    if done.returncode != 0:
        raise BadInput("`dvc repro` failed; the stage's own message is above.")


def main(tag: bool) -> None:
    root = Path.cwd()
    repro(root)
    released = promote.promote(root, tag=tag)
    print(promote.report(released))
    verified = artifacts.verify(root / released["path"])
    print(f"{released['path']}: {len(verified.manifest['files'])} files match manifest.json.")
