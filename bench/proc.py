"""Child processes under an outer wall clock, with their peak RSS; and the bench's worker protocol.

Peak RSS is polled from /proc/<pid>/status VmHWM (the high-water mark of the child's own address
space). `ru_maxrss` from wait4 is not used: Linux carries it across exec, so a child forked from a
large parent would report the parent's size.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from pipeline.errors import BadInput

REPO = Path(__file__).resolve().parent.parent


@dataclass
class Finished:
    returncode: int
    wall_s: float
    peak_rss_mb: float
    stdout: str
    stderr: str


def _vm_hwm_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return 0.0


def _tree_pids(pid: int) -> list[int]:
    try:
        return [pid, *(child.pid for child in psutil.Process(pid).children(recursive=True))]
    except psutil.NoSuchProcess:
        return [pid]


def run_monitored(cmd: list[str], *, env: dict[str, str] | None = None, cwd: Path | None = None,
                  log: Path | None = None, poll_s: float = 0.1) -> Finished:
    """Run `cmd`; wall time from spawn to exit, peak RSS = largest VmHWM of any process in its tree.

    Output goes to files (a pipe nobody reads while polling could fill and stall the child);
    with `log`, both streams are kept there as well.
    """
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        out_path, err_path = Path(tmp) / "stdout", Path(tmp) / "stderr"
        with open(out_path, "w") as out, open(err_path, "w") as err:
            begin = time.monotonic()
            child = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, cwd=cwd)
            peaks: dict[int, float] = {}
            while child.poll() is None:
                for pid in _tree_pids(child.pid):
                    peaks[pid] = max(peaks.get(pid, 0.0), _vm_hwm_mb(pid))
                time.sleep(poll_s)
            wall = time.monotonic() - begin
        stdout, stderr = out_path.read_text(), err_path.read_text()
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(f"$ {' '.join(cmd)}\n--- stdout\n{stdout}\n--- stderr\n{stderr}")
    return Finished(child.returncode, round(wall, 3), round(max(peaks.values(), default=0.0), 1),
                    stdout, stderr)


def worker_env(threads: int) -> dict[str, str]:
    """The environment every measured worker gets: the repo importable, thread pools pinned."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[name] = str(threads)
    return env


def run_worker(task: str, args: dict[str, Any], threads: int) -> dict[str, Any]:
    """`python -m bench.worker TASK ARGS_JSON OUT` in a fresh process; its answer plus peak RSS."""
    with tempfile.TemporaryDirectory(prefix="bench-worker-") as tmp:
        out = Path(tmp) / "answer.json"
        done = run_monitored([sys.executable, "-m", "bench.worker", task, json.dumps(args),
                              str(out)], env=worker_env(threads), cwd=REPO)
        if done.returncode != 0 or not out.is_file():
            tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise BadInput(f"bench worker {task} failed (exit {done.returncode}): {tail}")
        answer = json.loads(out.read_text())
    answer["process"] = {"wall_s": done.wall_s, "peak_rss_mb": done.peak_rss_mb}
    return answer
