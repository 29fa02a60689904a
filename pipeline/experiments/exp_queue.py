"""DVC's experiment queue as `edgerag sweep` drives it.

Each job is a queued experiment (`dvc exp run --queue`) that a queue worker runs in a temporary
workspace of its own; every worker shares this repository's DVC cache and run cache, so a stage
one job built is restored, never rebuilt, by the next. The user's workspace is never checked out
(no detached HEAD, no params.yaml left behind), and N workers run N jobs at once.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from pipeline import artifacts
from pipeline.errors import BadInput

QUEUED, RUNNING, SUCCESS, FAILED = "Queued", "Running", "Success", "Failed"
DONE = (SUCCESS, FAILED)
POLL_S = 2.0
KILL_WAIT_S = 60.0
LOCK = Path("dvc.lock")


def default_threads(jobs: int) -> int:
    """Threads per job so that `jobs` jobs at once do not oversubscribe this machine's cores."""
    return max(1, (os.cpu_count() or 1) // jobs)


def worker_env(threads: int) -> dict[str, str]:
    """Stages call `python` and `dvc`: make them this interpreter's; cap each job's threads."""
    capped = {name: str(threads) for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    return {**os.environ, **capped,
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


def dvc(*args: str, cwd: Path | str = ".", threads: int | None = None
        ) -> subprocess.CompletedProcess[str]:
    """This interpreter's DVC, output captured; stages it runs get `threads` (default: all)."""
    return subprocess.run([sys.executable, "-m", "dvc", *args], cwd=cwd, capture_output=True,
                          text=True, env=worker_env(threads or default_threads(1)))


def enqueue(name: str, targets: Iterable[str] = ()) -> None:
    """Queue the workspace as it is now (params.yaml included) as experiment `name`, without its
    dvc.lock (see `drop_lock`); the workspace keeps its lock."""
    saved = LOCK.read_text() if LOCK.is_file() else None
    drop_lock(Path("."))
    try:
        done = dvc("exp", "run", "--queue", "--name", name, *targets)
    finally:
        if saved is not None:
            artifacts.atomic_write_text(LOCK, saved)
    if done.returncode != 0:
        why = (done.stderr.strip().splitlines() or ["no message"])[-1].removeprefix("ERROR: ")
        raise BadInput(f"DVC could not queue experiment {name}: {why}")


def drop_lock(repo: Path) -> None:
    """A job's workspace starts without dvc.lock, so DVC matches each stage by its run cache alone.
    A lock committed elsewhere pins that build's run records (data/runs/, unique to each build):
    for a stage whose params and deps still match it, DVC restores from the lock, finds those
    records in no cache here, and rebuilds the stage instead of asking the run cache; an
    experiment of some stages also fails to commit the lock's other outputs it never built."""
    (repo / LOCK).unlink(missing_ok=True)


def forget(names: Iterable[str]) -> None:
    """Drop earlier queue entries and experiments of these names, so they can be queued again."""
    for name in names:  # one at a time: DVC refuses the whole list if one name is unknown
        dvc("queue", "remove", name)
        dvc("exp", "remove", name)


def statuses(names: Iterable[str]) -> dict[str, str]:
    """Each named experiment's queue status (Queued, Running, Success, Failed); of two entries
    with one name (an old run DVC kept), the newer."""
    from dvc.repo import Repo

    wanted = set(names)
    with Repo(".") as repo:
        entries = [e for e in repo.experiments.celery_queue.status() if e.get("name") in wanted]
    return {e["name"]: e["status"] for e in sorted(entries, key=lambda e: e["timestamp"])}


def run(names: list[str], jobs: int, threads: int, on_change: Callable[[str, str], None],
        first: Iterable[str] = ()) -> dict[str, str]:
    """Run the named queued experiments `jobs` at a time (one worker alone until those in `first`
    are done) and wait for all; their statuses. `on_change(name, status)` hears each change.
    Interrupted, it kills what it started."""
    first = [name for name in first if name in names]
    seen: dict[str, str] = {}
    try:
        _start(1 if first else jobs, threads)
        while True:
            now = statuses(names)
            for name, status in now.items():
                if seen.get(name) != status:
                    on_change(name, status)
            if first and all(now.get(name) in DONE for name in first):
                first = []
                _start(jobs, threads)
            seen = now
            if all(now.get(name) in DONE for name in names):
                return now
            if not any(now.get(name) in (QUEUED, RUNNING) for name in names):
                missing = ", ".join(n for n in names if n not in now)
                raise BadInput(f"DVC's queue lost experiments {missing}; see `dvc queue status`.")
            time.sleep(POLL_S)
    except BaseException:
        kill(names)
        raise


def _start(workers: int, threads: int) -> None:
    """`dvc queue start`. Its workers are daemons that inherit the caller's stdout and stderr:
    they get files, never our pipes, or waiting for `dvc queue start` would wait for them."""
    with tempfile.TemporaryFile("w+") as errors:
        started = subprocess.run([sys.executable, "-m", "dvc", "queue", "start", "--jobs",
                                  str(workers)], stdout=subprocess.DEVNULL, stderr=errors,
                                 env=worker_env(threads))
        errors.seek(0)
        if started.returncode != 0:
            raise BadInput(f"DVC could not start its queue workers: {errors.read().strip()}")


def kill(names: Iterable[str]) -> None:
    """Stop running experiments and drop queued ones, then stop the workers."""
    names = list(names)
    now = statuses(names)
    running = [n for n in names if now.get(n) == RUNNING]
    queued = [n for n in names if now.get(n) == QUEUED]
    if running:
        dvc("queue", "kill", *running)
    if queued:
        dvc("queue", "remove", *queued)
    dvc("queue", "stop")
    deadline = time.monotonic() + KILL_WAIT_S
    while running and time.monotonic() < deadline:  # gone from the queue, not just signalled
        time.sleep(POLL_S)
        now = statuses(running)
        running = [name for name in running if now.get(name) == RUNNING]


def log(name: str) -> str:
    """What the experiment's `dvc exp run` printed (DVC keeps it with the queue entry)."""
    return dvc("queue", "logs", name).stdout
