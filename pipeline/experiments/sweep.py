"""`edgerag sweep`: a Hydra multirun in which every job is one DVC experiment.

Hydra expands the overrides into jobs (its basic sweeper makes a grid; the Optuna sweeper searches
for the size/perplexity front). Each job's params.yaml is what `edgerag configure` would write; the
job is queued as a DVC experiment and DVC's queue workers run `--jobs` of them at once, each in a
temporary workspace, all sharing one cache and run cache: a stage whose params and deps another job
already built is restored, never rebuilt. Before a grid fans out, the stages every job builds
identically are built once. Each job leaves result.json in its Hydra job folder; the sweep gathers
them into sweeps/<name>/results.csv and the Pareto plot. Re-running a sweep keeps its finished jobs.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from pipeline import artifacts, conf, config, layout, params_file, validation
from pipeline.errors import BadInput
from pipeline.experiments import exp_queue, pareto, results
from pipeline.experiments.jobs import SWEEPS, failure_reason, shared_stages, stages_run

RESULT, PLAN = "result.json", "sweep.json"
PLANNED, INTERRUPTED = "planned", "interrupted"
OPTUNA_EXTRA = "sweep-optuna"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
# How this sweep runs its jobs, for the Hydra task function (Hydra passes it only the config).
_SETTINGS: dict[str, Any] = {"defer": True, "threads": 1}


def plan_job(cfg: Any, overrides: list[str], job_dir: Path) -> dict[str, Any]:
    """Validate one job's config and save the params.yaml it builds with; its row so far."""
    row: dict[str, Any] = {"experiment": "", "status": "failed", "reason": "",
                           "overrides": " ".join(overrides)}
    try:
        typed = params_file.validate(OmegaConf.create(OmegaConf.to_container(cfg, resolve=True)))
        validation.check(typed)
    except BadInput as error:
        return {**row, "reason": str(error)}
    artifacts.atomic_write_text(job_dir / config.PARAMS_FILE, conf.params_text(typed, overrides))
    return {**row, "status": PLANNED, "quant": typed.quant.name, "backend": typed.backend.name}


def finish_job(row: dict[str, Any], experiment: str, status: str | None,
               job_dir: Path) -> dict[str, Any]:
    """A queued job's row once DVC's queue is done with it: its metrics and artifact hashes read
    at the experiment's revision, or why it failed."""
    if status not in exp_queue.DONE:
        return {**row, "status": INTERRUPTED, "reason": "the sweep was interrupted."}
    text = exp_queue.log(experiment)
    artifacts.atomic_write_text(job_dir / "dvc.out", text)
    row = {**row, "stages_run": " ".join(stages_run(text))}
    if status != exp_queue.SUCCESS:
        return {**row, "status": "failed", "reason": failure_reason(text)}
    from dvc.api import DVCFileSystem
    from dvc.exceptions import DvcException

    try:
        fs = DVCFileSystem(".", rev=experiment)
        metrics = results.flatten(json.loads(fs.read_text(layout.RUN_METRICS)))
        hashes = results.artifact_hashes(
            lambda folder: json.loads(fs.read_text(f"{folder}/{layout.MANIFEST}")))
    except (OSError, KeyError, ValueError, DvcException) as error:
        return {**row, "status": "failed",
                "reason": f"built, but its results are unreadable: {error}"}
    return {**row, "experiment": experiment, "status": "ok", "reason": "", **metrics, **hashes}


def _save_row(job_dir: Path, row: dict[str, Any]) -> None:
    artifacts.atomic_write_text(job_dir / RESULT, json.dumps(row, indent=2) + "\n")


def _say(row: dict[str, Any]) -> None:
    detail = row["experiment"] if row["status"] == "ok" else row["reason"]
    print(f"job {row['job']} {row['status']} in {row.get('wall_s', 0)}s: {detail} "
          f"(ran: {row.get('stages_run') or 'nothing'})", flush=True)


def _job(cfg: Any) -> tuple[float, ...] | None:
    """The Hydra task function. A grid job is only planned here (the queue runs them all after
    Hydra has enumerated them); an Optuna trial runs now, because the sweeper waits for it."""
    from hydra.core.hydra_config import HydraConfig

    hydra = HydraConfig.get()
    job_dir = Path(hydra.runtime.output_dir)
    overrides = list(hydra.overrides.task)
    before = _read_row(job_dir)
    if before.get("status") == "ok" and before.get("overrides") == " ".join(overrides):
        print(f"job {before['job']} finished in an earlier run: {before['experiment']}", flush=True)
        return results.objectives(before)
    row = {"job": hydra.job.num, **plan_job(cfg, overrides, job_dir)}
    _save_row(job_dir, row)
    if row["status"] != PLANNED:
        _say(row)
        return None
    if _SETTINGS["defer"]:
        return None
    [row] = _run_queue(job_dir.parent.parent.name, [row], jobs=1, threads=_SETTINGS["threads"])
    return results.objectives(row)


def _read_row(job_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((job_dir / RESULT).read_text())
    except (OSError, ValueError):
        return {}


def _run_queue(sweep_name: str, rows: list[dict[str, Any]], jobs: int,
               threads: int) -> list[dict[str, Any]]:
    """Queue the planned rows as experiments <sweep>-<job> (after the stages they share, built
    once), run them `jobs` at a time, and record each row as it ends."""
    jobs_dir = SWEEPS / sweep_name / "jobs"
    names = {row["job"]: f"{sweep_name}-{row['job']}" for row in rows}
    params_of = {row["job"]: (jobs_dir / str(row["job"]) / config.PARAMS_FILE).read_text()
                 for row in rows}
    seed = f"{sweep_name}-shared"
    shared = shared_stages([OmegaConf.to_container(OmegaConf.create(text))
                            for text in params_of.values()]) if jobs > 1 and len(rows) > 1 else []
    exp_queue.forget([*names.values(), seed])
    params = Path(config.PARAMS_FILE)
    with _params_kept():  # `dvc exp run --queue` snapshots the workspace's params.yaml
        if shared:
            artifacts.atomic_write_text(params, next(iter(params_of.values())))
            exp_queue.enqueue(seed, shared)
        for job, name in names.items():
            artifacts.atomic_write_text(params, params_of[job])
            exp_queue.enqueue(name)
    by_name = {names[row["job"]]: row for row in rows}
    started: dict[str, float] = {}
    done: dict[str, dict[str, Any]] = {}

    def record(name: str, status: str) -> None:
        if name == seed:
            if status == exp_queue.SUCCESS:
                print(f"shared stages built once: {' '.join(shared)}", flush=True)
            elif status == exp_queue.FAILED:
                print(f"shared stages failed ({failure_reason(exp_queue.log(seed))}); each job "
                      "builds what it needs.", flush=True)
            return
        if status == exp_queue.RUNNING:
            started[name] = time.monotonic()
        elif status in exp_queue.DONE:
            wall = round(time.monotonic() - started.get(name, time.monotonic()), 1)
            row = finish_job(by_name[name], name, status, jobs_dir / str(by_name[name]["job"]))
            done[name] = {**row, "wall_s": wall}
            _save_row(jobs_dir / str(row["job"]), done[name])
            _say(done[name])

    try:
        exp_queue.run([seed, *by_name] if shared else list(by_name), jobs, threads, record,
                      first=[seed])
        exp_queue.forget([seed] if shared else [])
    finally:  # interrupted: what succeeded is kept, the rest (killed or never started) is not
        final = exp_queue.statuses(by_name) if len(done) < len(by_name) else {}
        for name, row in by_name.items():
            if name not in done:
                status = exp_queue.SUCCESS if final.get(name) == exp_queue.SUCCESS else None
                done[name] = finish_job(row, name, status, jobs_dir / str(row["job"]))
                _save_row(jobs_dir / str(row["job"]), done[name])
    return [done[name] for name in by_name]


def _check(overrides: list[str], name: str, jobs: int, threads: int | None,
           cluster_address: str | None = None) -> None:
    """Everything that would make every job fail, before any job runs."""
    if not _NAME.fullmatch(name):
        raise BadInput(f"--name {name!r} may only use letters, digits, '.', '_' and '-' "
                       "(it names DVC experiments).")
    if jobs < 1:
        raise BadInput(f"--jobs {jobs} must be 1 or more: it is how many jobs run at once.")
    if threads is not None and threads < 1:
        raise BadInput(f"--threads {threads} must be 1 or more: it is each job's thread count.")
    optuna = any(o.startswith("hydra/sweeper=optuna") for o in overrides)
    if optuna and not _has_optuna():
        raise BadInput(f"the Optuna sweeper is not installed: pip install -e '.[{OPTUNA_EXTRA}]'.")
    if optuna and jobs > 1:
        raise BadInput("the Optuna sweeper waits for each trial before it picks the next, so "
                       "its trials run one at a time; drop --jobs.")
    if cluster_address and (jobs > 1 or optuna):
        raise BadInput("--cluster runs a grid's jobs on as many workers as the cluster has; "
                       "drop --jobs and the Optuna sweeper.")
    earlier = _read_plan(SWEEPS / name)
    if earlier is not None and earlier != overrides:
        raise BadInput(f"{SWEEPS / name} is a sweep over other overrides ({' '.join(earlier)}); "
                       "choose another --name, or repeat its overrides to resume it.")
    if not Path("dvc.yaml").is_file():
        raise BadInput("there is no dvc.yaml here; run `edgerag sweep` at the repository root.")
    head = subprocess.run(["git", "rev-parse", "--verify", "--quiet", "HEAD"],
                          capture_output=True, text=True)
    if head.returncode != 0:
        raise BadInput("DVC experiments branch from a git commit and this repository has none; "
                       "commit first.")


def _read_plan(folder: Path) -> list[str] | None:
    """The overrides an earlier run of this sweep was started with (None: a new sweep)."""
    try:
        return json.loads((folder / PLAN).read_text())["overrides"]
    except (OSError, ValueError, KeyError):
        return None


def _has_optuna() -> bool:
    try:
        return find_spec("hydra_plugins.hydra_optuna_sweeper") is not None
    except ModuleNotFoundError:
        return False


def _launch(overrides: list[str], jobs_dir: Path) -> None:
    """Hand the overrides to a Hydra app on conf/ (Hydra's own argv parsing and sweepers)."""
    import hydra
    from hydra.errors import ConfigCompositionException, OverrideParseException

    app = hydra.main(config_path=str(conf.CONF_DIR), config_name="config",
                     version_base="1.3")(_job)
    argv, full_error = sys.argv, os.environ.get("HYDRA_FULL_ERROR")
    sys.argv = ["edgerag sweep", "--multirun", *overrides, f"hydra.sweep.dir={jobs_dir}",
                "hydra.job.chdir=false"]
    os.environ["HYDRA_FULL_ERROR"] = "1"  # let composition errors reach us as exceptions
    try:
        app()
    except (ConfigCompositionException, OverrideParseException) as error:
        first = str(error).strip().splitlines()[0].rstrip(".")
        raise BadInput(f"bad sweep override: {first}.") from None
    finally:
        sys.argv = argv
        if full_error is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = full_error


def _rows(jobs_dir: Path) -> list[dict[str, Any]]:
    files = sorted(jobs_dir.glob(f"*/{RESULT}"), key=lambda p: int(p.parent.name))
    return [json.loads(file.read_text()) for file in files]


def run(overrides: list[str], name: str | None = None, jobs: int = 1,
        threads: int | None = None, cluster_address: str | None = None) -> int:
    """Run the sweep (or resume it: jobs that finished are kept), `jobs` at a time through DVC's
    queue; write sweeps/<name>/{results.csv,pareto.*}. An interrupted sweep records its unfinished
    jobs as interrupted and leaves the workspace as it found it."""
    name = name or datetime.now().strftime("sweep-%Y%m%d-%H%M%S")
    _check(overrides, name, jobs, threads, cluster_address)
    where = None
    if cluster_address:  # no origin, remote or pushed commit: say so before planning anything
        from pipeline.experiments import cluster

        where = cluster.remotes()
    folder = SWEEPS / name
    resumed = folder.exists()
    optuna = any(o.startswith("hydra/sweeper=optuna") for o in overrides)
    _SETTINGS.update(defer=not optuna, threads=threads or exp_queue.default_threads(jobs))
    artifacts.atomic_write_text(folder / PLAN, json.dumps({"overrides": overrides}) + "\n")
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        try:
            _launch(overrides, folder / "jobs")
        except BadInput:
            if not resumed and not _rows(folder / "jobs"):  # nothing ran: leave the name free
                shutil.rmtree(folder, ignore_errors=True)
            raise
        planned = [row for row in _rows(folder / "jobs") if row["status"] == PLANNED]
        if planned and cluster_address:
            cluster.run(cluster_address, name, planned, threads,
                        lambda row: _finished(folder / "jobs", row), where)
        elif planned:
            _run_queue(name, planned, jobs, _SETTINGS["threads"])
    finally:
        signal.signal(signal.SIGTERM, previous)
        _write_results(name, folder)
    return 0


@contextmanager
def _params_kept() -> Iterator[None]:
    """params.yaml as it was before, whatever happens inside."""
    params = Path(config.PARAMS_FILE)
    saved = params.read_text() if params.is_file() else None
    try:
        yield
    finally:
        if saved is None:
            params.unlink(missing_ok=True)
        elif params.read_text() != saved:
            artifacts.atomic_write_text(params, saved)


def _finished(jobs_dir: Path, row: dict[str, Any]) -> None:
    _save_row(jobs_dir / str(row["job"]), row)
    _say(row)


def _interrupt(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def _write_results(name: str, folder: Path) -> None:
    rows = [{**row, "status": INTERRUPTED, "reason": "the sweep was interrupted."}
            if row["status"] == PLANNED else row for row in _rows(folder / "jobs")]
    if not rows:
        return
    artifacts.atomic_write_text(folder / results.RESULTS, results.results_csv(rows))
    best = [f"{d['quant']} #{d['job']}" for d in pareto.write(rows, folder) if d["pareto"]]
    counts = {status: sum(row["status"] == status for row in rows)
              for status in ("ok", "failed", INTERRUPTED)}
    said = ", ".join(f"{n} {s}" for s, n in counts.items() if n or s != INTERRUPTED)
    print(f"sweep {name}: {said}; wrote {folder / results.RESULTS} and {folder / pareto.PLOT}; "
          f"Pareto front: {', '.join(best) or 'none'}. Compare with `dvc exp show`; take one with "
          "`dvc exp apply NAME`.", flush=True)
