"""`edgerag sweep`: a Hydra multirun in which every job is one DVC experiment.

Hydra expands the overrides into jobs (its basic sweeper makes a grid; the Optuna sweeper searches
for the size/perplexity front). Each job writes params.yaml exactly as `edgerag configure` would
and runs `dvc exp run` in the workspace, so every experiment shares one cache and a stage whose
params and deps did not change is skipped, never rebuilt. Jobs run one at a time because they share
the workspace; past one machine, fan out with `dvc queue` workers instead.
Each job leaves result.json in its Hydra job folder; the sweep gathers them into
sweeps/<name>/results.csv and the Pareto plot.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
from datetime import datetime
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from pipeline import artifacts, config, validation
from pipeline.errors import BadInput
from pipeline.release import pareto

SWEEPS = Path("sweeps")
RESULT, RESULTS = "result.json", "results.csv"
METRICS = Path("data/eval/metrics.json")
# Artifact hashes each row keeps, read from the artifact's manifest: column -> (directory, file).
HASHES = {"llm_pte_sha256": ("data/lowered", "llm.pte"),
          "index_sha256": ("data/index", "index.usearch")}
FIRST_COLUMNS = ("job", "experiment", "status", "reason", "overrides", "quant", "backend",
                 "stages_run", "wall_s")
# What a job returns to Hydra, in the order of `direction` in conf/hydra/sweeper/optuna_pareto.yaml.
OBJECTIVES = (pareto.DELTA, pareto.SIZE)
OPTUNA_EXTRA = "sweep-optuna"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested metrics as dotted columns: {"llm": {"ppl": 9.1}} -> {"llm.ppl": 9.1}."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = json.dumps(value) if isinstance(value, list) else value
    return flat


def results_csv(rows: list[dict[str, Any]]) -> str:
    """One row per job: its identity and status, every metric (sorted), then artifact hashes."""
    metrics = sorted({key for row in rows for key in row} - set(FIRST_COLUMNS) - set(HASHES))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=[*FIRST_COLUMNS, *metrics, *HASHES], restval="",
                            lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def stages_run(dvc_stdout: str) -> list[str]:
    """The stages `dvc exp run` really ran (skipped and run-cache-restored ones say otherwise)."""
    return re.findall(r"Running stage '([^']+)'", dvc_stdout)


def failure_reason(dvc_stderr: str) -> str:
    """One line saying why a job failed: the stage's own `edgerag: …` sentence, else DVC's error."""
    lines = [line.strip() for line in dvc_stderr.splitlines() if line.strip()]
    ours = [line for line in lines if line.startswith("edgerag:")]
    dvc = [line.removeprefix("ERROR:").strip() for line in lines if line.startswith("ERROR:")]
    return (ours[-1:] or dvc[:1] or lines[-1:] or ["dvc exp run failed without a message."])[0]


def objectives(row: dict[str, Any]) -> tuple[float, ...] | None:
    """What Optuna minimizes; None for a failed job, which Optuna then records as a failed trial."""
    if row.get("status") != "ok":
        return None
    return tuple(float(row[key]) for key in OBJECTIVES)


def _artifact_hashes() -> dict[str, str]:
    return {column: artifacts.read_manifest(folder)["files"][file]["sha256"]
            for column, (folder, file) in HASHES.items()}


def _dvc_env() -> dict[str, str]:
    """Stages call `python`: make it this interpreter, as `PATH=.venv/bin:$PATH dvc` would."""
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


def run_job(cfg: Any, overrides: list[str], experiment: str, job_dir: Path) -> dict[str, Any]:
    """Validate one job's config, write params.yaml, `dvc exp run` it; its results.csv row."""
    row: dict[str, Any] = {"experiment": "", "status": "failed", "reason": "",
                           "overrides": " ".join(overrides)}
    try:
        typed = config.validate(OmegaConf.create(OmegaConf.to_container(cfg, resolve=True)))
        validation.check(typed)
    except BadInput as error:
        return {**row, "reason": str(error)}
    row.update(quant=typed.quant.name, backend=typed.backend.name)
    artifacts.atomic_write_text(config.PARAMS_FILE, config.params_text(typed, overrides))
    done = subprocess.run([sys.executable, "-m", "dvc", "exp", "run", "--name", experiment],
                          capture_output=True, text=True, env=_dvc_env())
    artifacts.atomic_write_text(job_dir / "dvc.out", done.stdout)
    artifacts.atomic_write_text(job_dir / "dvc.err", done.stderr)
    row["stages_run"] = " ".join(stages_run(done.stdout))
    if done.returncode != 0:
        return {**row, "reason": failure_reason(done.stderr)}
    try:
        metrics = flatten(json.loads(METRICS.read_text()))
        hashes = _artifact_hashes()
    except (OSError, KeyError, ValueError, BadInput) as error:
        return {**row, "reason": f"built, but its results are unreadable: {error}"}
    return {**row, "experiment": experiment, "status": "ok", **metrics, **hashes}


def _job(cfg: Any) -> tuple[float, ...] | None:
    """The Hydra task function: one job, its row saved beside Hydra's own job record."""
    from hydra.core.hydra_config import HydraConfig

    hydra = HydraConfig.get()
    job_dir = Path(hydra.runtime.output_dir)
    sweep_name = job_dir.parent.parent.name  # hydra.sweep.dir is sweeps/<name>/jobs
    started = time.monotonic()
    row = run_job(cfg, list(hydra.overrides.task), f"{sweep_name}-{hydra.job.num}", job_dir)
    row = {"job": hydra.job.num, **row, "wall_s": round(time.monotonic() - started, 1)}
    artifacts.atomic_write_text(job_dir / RESULT, json.dumps(row, indent=2) + "\n")
    detail = row["experiment"] if row["status"] == "ok" else row["reason"]
    print(f"job {row['job']} {row['status']} in {row['wall_s']}s: {detail} "
          f"(ran: {row.get('stages_run') or 'nothing'})", flush=True)
    return objectives(row)


def _check(overrides: list[str], name: str) -> None:
    """Everything that would make every job fail, before any job runs."""
    if not _NAME.fullmatch(name):
        raise BadInput(f"--name {name!r} may only use letters, digits, '.', '_' and '-' "
                       "(it names DVC experiments).")
    if (SWEEPS / name).exists():
        raise BadInput(f"{SWEEPS / name} already exists; choose another --name.")
    if any(o.startswith("hydra/sweeper=optuna") for o in overrides) and not _has_optuna():
        raise BadInput(f"the Optuna sweeper is not installed: pip install -e '.[{OPTUNA_EXTRA}]'.")
    if not Path("dvc.yaml").is_file():
        raise BadInput("there is no dvc.yaml here; run `edgerag sweep` at the repository root.")
    head = subprocess.run(["git", "rev-parse", "--verify", "--quiet", "HEAD"],
                          capture_output=True, text=True)
    if head.returncode != 0:
        raise BadInput("DVC experiments branch from a git commit and this repository has none; "
                       "commit first.")


def _has_optuna() -> bool:
    try:
        return find_spec("hydra_plugins.hydra_optuna_sweeper") is not None
    except ModuleNotFoundError:
        return False


def _launch(overrides: list[str], jobs_dir: Path) -> None:
    """Hand the overrides to a Hydra app on conf/ (Hydra's own argv parsing and sweepers)."""
    import hydra
    from hydra.errors import ConfigCompositionException, OverrideParseException

    app = hydra.main(config_path=str(config.CONF_DIR), config_name="config",
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


def run(overrides: list[str], name: str | None = None) -> int:
    """Run the sweep, restore params.yaml, write sweeps/<name>/{results.csv,pareto.*}."""
    name = name or datetime.now().strftime("sweep-%Y%m%d-%H%M%S")
    _check(overrides, name)
    folder, params = SWEEPS / name, Path(config.PARAMS_FILE)
    saved = params.read_text() if params.is_file() else None
    try:
        _launch(overrides, folder / "jobs")
    except BadInput:
        if not _rows(folder / "jobs"):  # Hydra stopped before any job: leave the name free
            shutil.rmtree(folder, ignore_errors=True)
        raise
    finally:
        if saved is None:
            params.unlink(missing_ok=True)
        elif params.read_text() != saved:
            artifacts.atomic_write_text(params, saved)
    rows = _rows(folder / "jobs")
    artifacts.atomic_write_text(folder / RESULTS, results_csv(rows))
    best = [f"{d['quant']} #{d['job']}" for d in pareto.write(rows, folder) if d["pareto"]]
    failed = sum(row["status"] != "ok" for row in rows)
    print(f"sweep {name}: {len(rows) - failed} ok, {failed} failed; wrote {folder / RESULTS} and "
          f"{folder / pareto.PLOT}; Pareto front: {', '.join(best) or 'none'}. "
          "Compare with `dvc exp show`; take one with `dvc exp apply NAME`.")
    return 0
