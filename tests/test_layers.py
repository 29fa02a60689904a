"""The module layers of pyproject.toml's import-linter contracts hold: no import circles, and
no import from a lower layer up to a higher one (function-local imports included)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO


def test_the_import_layers_hold():
    linter = Path(sys.executable).parent / "lint-imports"
    done = subprocess.run([str(linter)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Contracts: 2 kept, 0 broken." in done.stdout
