"""A sweep's jobs on many machines: Dask schedules them, a DVC remote shares what they build.

Every Dask worker keeps a private clone of the sweep's git repository and a private DVC cache;
workers share nothing but the git remote (each job's experiment is pushed there) and the DVC
remote (outputs and the run cache). A job fetches the run cache before it runs, so a stage any
worker pushed is restored, not rebuilt; the stages every job builds alike run first, as one task
the jobs wait on. Workers declare `--resources edgerag=1` so each runs one job at a time with all
of its threads.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from pipeline import artifacts, config, dask_cluster, layout
from pipeline.errors import BadInput
from pipeline.experiments import exp_queue, jobs, results

RESOURCE = "edgerag"


def _git(*args: str, cwd: Path | str = ".") -> str:
    done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        raise BadInput(f"git {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout.strip()


def remotes() -> tuple[str, str, str]:
    """(git URL of origin, URL of DVC's default remote, HEAD's commit), checked: the workers can
    only build a commit they can fetch."""
    from dvc.repo import Repo

    url = subprocess.run(["git", "remote", "get-url", "origin"], capture_output=True, text=True)
    if url.returncode != 0:
        raise BadInput("--cluster needs a git remote named origin that every worker can reach.")
    with Repo(".") as repo:
        name = repo.config["core"].get("remote")
        if not name:
            raise BadInput("--cluster needs a default DVC remote every worker can reach "
                           "(`dvc remote add -d NAME URL`).")
        dvc_url = repo.config["remote"][name]["url"]
    head = _git("rev-parse", "HEAD")
    _git("fetch", "-q", "origin")
    if not _git("branch", "-r", "--contains", head):
        raise BadInput(f"commit {head[:12]} is not on origin; push it first, the workers build "
                       "from there.")
    return url.stdout.strip(), dvc_url, head


def _worker_repo(git_url: str, dvc_url: str, rev: str) -> Path:
    """This worker's own clone at `rev`, its DVC default remote set to the shared one."""
    from distributed import get_worker

    clone = Path(get_worker().local_directory) / "edgerag-repo"
    if not (clone / ".git").is_dir():
        _git("clone", "-q", git_url, str(clone), cwd=clone.parent)
    _git("fetch", "-q", "origin", cwd=clone)
    _git("reset", "-q", "--hard", rev, cwd=clone)
    exp_queue.dvc("remote", "add", "--local", "--default", "--force", "shared", dvc_url, cwd=clone)
    return clone


def build(git_url: str, dvc_url: str, rev: str, experiment: str, params: str,
          targets: list[str], threads: int | None, _after: Any = None) -> dict[str, Any]:
    """One job on a worker: fetch the shared run cache, `dvc exp run` in the worker's clone,
    push the experiment and its run cache; the job's row (what ran, metrics, artifact hashes)."""
    from distributed import get_worker

    worker = get_worker()
    threads = threads or worker.state.nthreads
    row: dict[str, Any] = {"worker": f"{socket.gethostname()}:{worker.name}"}
    clone = _worker_repo(git_url, dvc_url, rev)
    exp_queue.dvc("fetch", "--run-cache", cwd=clone)  # what other workers pushed: restored
    artifacts.atomic_write_text(clone / config.PARAMS_FILE, params)
    exp_queue.drop_lock(clone)  # the clone's is origin's; `git reset` brings it back next job
    started = time.monotonic()
    # The shared stages are a plain `dvc repro` of those stages (an experiment would commit the
    # whole lock, whose other outputs this clone never built); a job is a whole experiment.
    done = exp_queue.dvc(*(("repro", "--pull", *targets) if targets else
                         ("exp", "run", "--pull", "--name", experiment)),
                         cwd=clone, threads=threads)
    row["wall_s"] = round(time.monotonic() - started, 1)
    row["stages_run"] = " ".join(jobs.stages_run(done.stdout))
    if done.returncode != 0:
        return {**row, "status": "failed", "reason": jobs.failure_reason(done.stderr)}
    # The shared stages need only the run cache; a job's experiment goes to origin as well.
    pushed = exp_queue.dvc(*(("push", "--run-cache", *targets) if targets else
                           ("exp", "push", "--run-cache", "origin", experiment)), cwd=clone)
    if pushed.returncode != 0:
        return {**row, "status": "failed",
                "reason": f"built, but not pushed: {jobs.failure_reason(pushed.stderr)}"}
    if targets:
        return {**row, "status": "ok"}
    try:
        metrics = results.flatten(json.loads((clone / layout.RUN_METRICS).read_text()))
        hashes = results.artifact_hashes(lambda folder: artifacts.read_manifest(clone / folder))
    except (OSError, KeyError, ValueError, BadInput) as error:
        return {**row, "status": "failed", "reason": f"built, but unreadable: {error}"}
    return {**row, "status": "ok", "experiment": experiment, **metrics, **hashes}


def run(address: str, sweep_name: str, rows: list[dict[str, Any]], threads: int | None,
        on_done: Any, where: tuple[str, str, str]) -> None:
    """Submit the shared stages, then every planned row, to the Dask scheduler at `address`;
    `on_done(row)` hears each finished row; the experiments are pulled here at the end."""
    client = dask_cluster.connect(address, "--cluster")
    from distributed import as_completed

    git_url, dvc_url, rev = where  # remotes(), checked before any job was planned
    jobs_dir = jobs.SWEEPS / sweep_name / "jobs"
    params = {row["job"]: (jobs_dir / str(row["job"]) / config.PARAMS_FILE).read_text()
              for row in rows}
    from omegaconf import OmegaConf

    shared = jobs.shared_stages([OmegaConf.to_container(OmegaConf.create(text))
                                  for text in params.values()]) if len(rows) > 1 else []
    names = {row["job"]: f"{sweep_name}-{row['job']}" for row in rows}
    with client:
        if not any(RESOURCE in info.get("resources", {})
                   for info in client.scheduler_info()["workers"].values()):
            raise BadInput(f"no worker of {address} offers the {RESOURCE} resource; start "
                           f"workers with `dask worker {address} --resources {RESOURCE}=1`.")
        seed = None
        if shared:
            seed = client.submit(build, git_url, dvc_url, rev, f"{sweep_name}-shared",
                                 next(iter(params.values())), shared, threads,
                                 resources={RESOURCE: 1}, pure=False, key=f"{sweep_name}-shared")
        futures = {client.submit(build, git_url, dvc_url, rev, names[row["job"]],
                                 params[row["job"]], [], threads, seed,
                                 resources={RESOURCE: 1}, pure=False,
                                 key=names[row["job"]]): row for row in rows}
        if seed is not None:
            seeded = seed.result()
            why = f": {seeded['reason']}" if seeded.get("reason") else ""
            print(f"shared stages on {seeded['worker']} in {seeded['wall_s']}s, "
                  f"{seeded['status']}{why} (ran: {seeded.get('stages_run') or 'nothing'})",
                  flush=True)
        built = []
        for future in as_completed(futures):
            row = {**futures[future], "reason": "", **future.result()}
            on_done(row)
            built += [row["experiment"]] if row["status"] == "ok" else []
    if not built:
        return
    pulled = exp_queue.dvc("exp", "pull", "origin", *built)
    if pulled.returncode != 0:
        print(f"edgerag: could not pull the experiments: {jobs.failure_reason(pulled.stderr)}",
              file=sys.stderr)
