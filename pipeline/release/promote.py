"""`edgerag promote`: pick a built run by the release rule and ship it as `releases/<name>/`.

The candidates are the workspace build and every finished experiment a sweep listed in
`sweeps/*/results.csv`; the rule (conf/release/) keeps the smallest LLM `.pte` whose metrics stay
within its bounds (or, with `pick_by`, the best answers among them). A run other than the
workspace is read at its git revision through DVC's filesystem, from the local cache, so
promoting never rewrites the workspace the user is in. Before copying, every artifact's manifest
is re-hashed and the metrics are checked to have been measured on exactly these files (the
manifests' recorded inputs).
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from pipeline import artifacts, bundle, config, layout, params_file
from pipeline.config import ReleaseConfig
from pipeline.errors import BadInput
from pipeline.experiments.results import flatten
from pipeline.progress import log
from pipeline.release import registry

WORKSPACE = "workspace"
PTE_BYTES, PPL_DELTA, RECALL = "llm.pte_bytes", "llm.ppl_delta_pct", "retrieval.recall_at_10"
RAG_HIT, RAG_GROUNDED, RAG_CUT = "rag.hit_at_k", "rag.grounded", "rag.context_cut_rate"
RAG_REPEATED, RAG_ABSTAIN, RAG_EVIDENCE = ("rag.repetition_rate", "rag.abstain_recall",
                                           "rag.evidence_hit_at_1")
# What release.pick_by may name: the .pte's size (smallest wins) or an answer metric (highest).
PICK_BY = (PTE_BYTES, "rag.answer_f1", "rag.answer_terms_recall", RAG_GROUNDED, RAG_EVIDENCE)
AUTO_HIT, AUTO_PROBES = "rag_auto.hit_at_k", "rag_auto.probes"
EMBED_COSINE = "retrieval.embed_cosine_min"
SWEEP_RESULTS = "sweeps/*/results.csv"
# A run's metrics are trusted only if each listed artifact was an input of the one measuring it.
MEASURED_ON = {
    layout.EVAL: (layout.EVAL_LLM, layout.EVAL_RAG, layout.INDEX, layout.EMBEDDER),
    layout.EVAL_LLM: (layout.LOWERED,),
    layout.EVAL_RAG: (layout.LOWERED, layout.EMBEDDER, layout.INDEX),
}


@dataclass(frozen=True)
class Candidate:
    """A built run: `workspace` or a DVC experiment name, with its metrics as dotted keys."""

    run: str
    metrics: dict[str, float]

    def describe(self) -> str:
        return "the workspace build" if self.run == WORKSPACE else f"experiment {self.run}"


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


def _answer_bounds(rule: ReleaseConfig) -> list[tuple[str, float, str, bool]]:
    """The answer bounds the rule sets (metric, bound, its name, whether it is a maximum); a
    bound at its no-op value (a maximum of 1, a minimum of 0) is not checked, so runs measured
    before the metric existed still compare."""
    bounds = [(RAG_REPEATED, rule.max_rag_repetition_rate, "max_rag_repetition_rate", True),
              (RAG_ABSTAIN, rule.min_rag_abstain_recall, "min_rag_abstain_recall", False),
              (RAG_EVIDENCE, rule.min_rag_evidence_hit_at_1, "min_rag_evidence_hit_at_1", False)]
    return [b for b in bounds if (b[1] < 1.0 if b[3] else b[1] > 0.0)]


def by_probes(metrics: dict[str, Any]) -> bool:
    """Whether the run was judged with no question set, on probes derived from its corpus."""
    return AUTO_HIT in metrics and RAG_HIT not in metrics


def gate_line(metrics: dict[str, Any]) -> str | None:
    """The one line saying the rule gated on probes rather than a question set, if it did."""
    if not by_probes(metrics):
        return None
    return (f"no question set for this corpus: the rule gated retrieval on rag_auto.* "
            f"({metrics.get(AUTO_PROBES, '?')} probes derived from the corpus), answers "
            "unjudged; write one and set rag_eval.questions to judge them")


def missed_bound(rule: ReleaseConfig, metrics: dict[str, Any]) -> str | None:
    """The first bound these metrics miss, as a clause; None when they meet the rule. A run
    judged on probes (`by_probes`) is held to `min_rag_auto_hit_at_k` by `rag_auto.hit_at_k`, and
    the bounds that need a question set (groundedness, context cuts, answers) are not checked."""
    probed = by_probes(metrics)
    answers = [] if probed else _answer_bounds(rule)
    cut = not probed and rule.max_context_cut_rate < 1.0
    hit = AUTO_HIT if probed else RAG_HIT
    checked = (PTE_BYTES, PPL_DELTA, RECALL, hit, *(() if probed else (RAG_GROUNDED,)),
               *((EMBED_COSINE,) if rule.min_embed_cosine > 0.0 else ()),
               *((RAG_CUT,) if cut else ()), *(key for key, *_ in answers))
    values = {key: _number(metrics.get(key)) for key in checked}
    absent = [key for key, value in values.items() if value is None]
    if absent:
        return f"it has no {absent[0]} metric"
    if values[PPL_DELTA] > rule.max_ppl_delta_pct:
        return (f"{PPL_DELTA}={values[PPL_DELTA]:g} is above "
                f"release.max_ppl_delta_pct={rule.max_ppl_delta_pct:g}")
    if cut and values[RAG_CUT] > rule.max_context_cut_rate:
        return (f"{RAG_CUT}={values[RAG_CUT]:g} is above "
                f"release.max_context_cut_rate={rule.max_context_cut_rate:g}: its context is too "
                "short for its prompts")
    minimums = [(RECALL, rule.min_recall_at_10, "min_recall_at_10"),
                *([(EMBED_COSINE, rule.min_embed_cosine, "min_embed_cosine")]
                  if rule.min_embed_cosine > 0.0 else []),
                ((AUTO_HIT, rule.min_rag_auto_hit_at_k, "min_rag_auto_hit_at_k") if probed
                 else (RAG_HIT, rule.min_rag_hit_at_k, "min_rag_hit_at_k"))]
    if not probed:
        minimums.append((RAG_GROUNDED, rule.min_rag_grounded, "min_rag_grounded"))
    for key, bound, name in minimums:
        if values[key] < bound:
            return f"{key}={values[key]:g} is below release.{name}={bound:g}"
    for key, bound, name, is_max in answers:
        if is_max and values[key] > bound:
            return f"{key}={values[key]:g} is above release.{name}={bound:g}"
        if not is_max and values[key] < bound:
            return f"{key}={values[key]:g} is below release.{name}={bound:g}"
    return None


def select(candidates: list[Candidate], rule: ReleaseConfig) -> Candidate:
    """The smallest LLM `.pte` among the runs that meet the rule, or the highest `pick_by` answer
    metric (then the smallest); the first listed wins a tie."""
    if not candidates:
        raise BadInput("there is no built run to promote: data/eval/metrics.json is missing and "
                       f"no {SWEEP_RESULTS} lists a finished experiment; run `dvc repro` first.")
    if rule.pick_by not in PICK_BY:
        raise BadInput(f"release.pick_by={rule.pick_by!r} is not one of {', '.join(PICK_BY)}.")
    passing = [c for c in candidates if missed_bound(rule, c.metrics) is None]
    if not passing:
        first = candidates[0]
        others = len(candidates) - 1
        tail = (f" (and {others} other run misses it too)" if others == 1 else
                f" (and {others} other runs miss it too)" if others else "")
        raise BadInput(f"no run meets the release rule: {first.describe()} misses it, "
                       f"{missed_bound(rule, first.metrics)}{tail}.")
    if rule.pick_by != PTE_BYTES:
        unmeasured = next((c for c in passing if _number(c.metrics.get(rule.pick_by)) is None),
                          None)
        if unmeasured is not None:
            raise BadInput(f"release.pick_by={rule.pick_by} and {unmeasured.describe()} has no "
                           f"{rule.pick_by}; run evaluate_rag for it, or pick by llm.pte_bytes.")
        return min(passing, key=lambda c: (-_number(c.metrics[rule.pick_by]),
                                           _number(c.metrics[PTE_BYTES])))
    return min(passing, key=lambda c: _number(c.metrics[PTE_BYTES]))


def workspace_candidate(root: Path) -> Candidate | None:
    metrics = root / layout.RUN_METRICS
    if not metrics.is_file():
        return None
    return Candidate(WORKSPACE, flatten(json.loads(metrics.read_text())))


def sweep_candidates(root: Path) -> list[Candidate]:
    """Finished experiments from every sweep's results.csv (one row per job), first seen wins."""
    found: dict[str, Candidate] = {}
    for table in sorted(root.glob(SWEEP_RESULTS)):
        with open(table, newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                name = (row.get("experiment") or "").strip()
                if row.get("status") == "ok" and name and name not in found:
                    metrics = {k: _number(v) for k, v in row.items() if k and "." in k}
                    found[name] = Candidate(name, {k: v for k, v in metrics.items()
                                                   if v is not None})
    return list(found.values())


@contextmanager
def run_files(root: Path, run: str) -> Iterator[tuple[Path, str | None]]:
    """(a folder holding the run's artifact directories and params.yaml, its git commit): the
    workspace itself, or a temporary copy read at the experiment's revision (DVC resolves
    experiment names)."""
    if run == WORKSPACE:
        yield root, _head(root)
        return
    fs = _open_run(root, run)
    if fs is None:
        raise BadInput(f"--run {run} is not an experiment or git revision of {root}; "
                       "list them with `dvc exp show`.")
    with tempfile.TemporaryDirectory(prefix="edgerag-run-") as tmp:
        copy = Path(tmp)
        for folder in (*bundle.RUN_DIRS, config.PARAMS_FILE):
            try:
                fs.get(folder, str(copy / folder), recursive=True)
            except FileNotFoundError:
                raise BadInput(f"experiment {run} has no {folder}; was it built?") from None
        for folder in bundle.OPTIONAL_RUN_DIRS:
            with contextlib.suppress(FileNotFoundError):
                fs.get(folder, str(copy / folder), recursive=True)
        yield copy, fs.repo.get_rev()


def check_run(run_root: Path) -> dict[str, artifacts.Artifact]:
    """Every artifact intact, and the metrics measured on exactly these artifacts."""
    found = {folder: artifacts.require(run_root / folder) for folder in bundle.RUN_DIRS}
    for measuring, measured in MEASURED_ON.items():
        inputs = found[measuring].manifest.get("inputs", {})
        for folder in measured:
            if inputs.get(folder) != found[folder].manifest_sha256:
                raise BadInput(f"{measuring} was measured on another {folder} than the one "
                               "there; run `dvc repro` so the metrics describe what ships.")
    return found


def _head(root: Path) -> str | None:
    try:
        result = subprocess.run(["git", "rev-parse", "--verify", "-q", "HEAD"], cwd=root,
                                capture_output=True, text=True)
    except OSError:
        return None
    return result.stdout.strip() or None


def _open_run(root: Path, run: str) -> Any:
    """DVC's filesystem at an experiment or revision of `root`; None when this repository
    does not have it (a sweep that ran on another machine, experiments not pulled)."""
    from dvc.api import DVCFileSystem
    from dvc.exceptions import DvcException

    try:
        fs = DVCFileSystem(str(root), rev=run)
        fs.ls("/")
    except DvcException:
        return None
    return fs


def present(root: Path, candidates: list[Candidate]) -> list[Candidate]:
    """The sweep runs whose experiment and metrics this machine has; one line for each other."""
    kept = []
    for candidate in candidates:
        fs = _open_run(root, candidate.run)
        if fs is not None and _has_file(fs, layout.RUN_METRICS):
            kept.append(candidate)
        else:
            why = "no such experiment here" if fs is None else "its artifacts are not in the cache"
            log(f"skipping experiment {candidate.run} from {SWEEP_RESULTS}: {why} "
                "(`dvc exp pull` brings a shared one).")
    return kept


def _has_file(fs: Any, path: str) -> bool:
    from dvc.exceptions import DvcException

    try:
        fs.read_bytes(path)
    except (OSError, DvcException):  # absent at that revision, or not in the local cache
        return False
    return True


def _disagreement(listed: dict[str, float], measured: dict[str, Any]) -> str | None:
    """The first rule metric a results row lists differently from the run's own metrics."""
    for key in (PTE_BYTES, PPL_DELTA, RECALL):
        if key in listed and listed[key] != _number(measured.get(key)):
            return f"{key}={listed[key]:g}"
    return None


def choose(root: Path, rule: ReleaseConfig, run: str | None) -> Candidate:
    if run:
        return Candidate(run, {})
    found = workspace_candidate(root)
    return select(([found] if found else []) + present(root, sweep_candidates(root)), rule)


def _description(params: dict[str, Any], metrics: dict[str, Any]) -> str:
    model, quant, backend = (params.get(k, {}).get("name", "?")
                             for k in ("model", "quant", "backend"))
    return (f"edgerag release: {model} {quant} on {backend}, "
            f"ppl delta {metrics.get(PPL_DELTA, '?')}%, recall@10 {metrics.get(RECALL, '?')}")


def ship(root: Path, candidate: Candidate, rule: ReleaseConfig, dest: Path) -> tuple[dict, dict]:
    """Verify the run, check it against the rule, and write it to `dest` unless it is there
    already (re-promoting the same build keeps the release as is); (params, metrics)."""
    with run_files(root, candidate.run) as (run_root, commit):
        found = check_run(run_root)
        metrics = json.loads((found[layout.EVAL] / layout.METRICS).read_text())
        disagree = _disagreement(candidate.metrics, flatten(metrics))
        if disagree:
            raise BadInput(f"{candidate.describe()}'s row in {SWEEP_RESULTS} says {disagree}, "
                           f"but its own {layout.RUN_METRICS} disagrees; re-run the sweep.")
        missed = missed_bound(rule, flatten(metrics))
        if missed:
            raise BadInput(f"{candidate.describe()} misses the release rule: {missed}.")
        params = OmegaConf.to_container(OmegaConf.load(run_root / config.PARAMS_FILE))
        shas = {f"{folder}/{rel}": entry["sha256"] for folder, artifact in found.items()
                for rel, entry in artifact.manifest.get("files", {}).items()}
        if not bundle.holds(dest, run_root, shas):
            bundle.write(dest, run_root, params, {
                "run": candidate.run, "git_commit": commit, "rule": asdict(rule),
                "metrics": metrics,
                "artifacts": {folder: a.manifest_sha256 for folder, a in found.items()}})
    return params, metrics


def promote(root: Path, name: str | None = None, run: str | None = None,
            tag: bool = True) -> dict[str, Any]:
    """Select, verify, copy, register and (unless `tag` is False) tag; returns what it did."""
    rule = params_file.load(root / config.PARAMS_FILE).release
    name = name or rule.name
    registry.check_name(name)
    if tag:
        registry.check_git(root, name)
    candidate = choose(root, rule, run)
    dest = root / bundle.RELEASES / name
    params, metrics = ship(root, candidate, rule, dest)
    description = _description(params, flatten(metrics))
    registry.add_artifact(root, name, description)
    registry.track(root, name)
    released = {"name": name, "path": str(dest.relative_to(root)), "run": candidate.run,
                "metrics": flatten(metrics), "tag": None}
    if tag:
        released["tag"], released["new_tag"] = registry.commit_and_tag(
            root, name, f"Release {name}: {description}")
    return released


DELTAS = "deltas"  # beside releases/, ignored by git: a delta is derived, rebuilt on demand


def report(released: dict[str, Any]) -> str:
    metrics = released["metrics"]
    lines = [f"promoted {released['run']} to {released['path']}/ "
             f"(llm.pte {metrics[PTE_BYTES] / 1e6:.1f} MB, ppl delta {metrics[PPL_DELTA]:g}%, "
             f"recall@10 {metrics[RECALL]:g})"]
    if released["tag"]:
        verb = "tagged" if released.get("new_tag") else "already tagged"
        version = released["tag"].rsplit("@", 1)[-1]
        lines.append(f"{verb} {released['tag']}; fetch it anywhere with "
                     f"`dvc artifacts get <repo> {released['name']} --rev {version}`")
    else:
        lines.append(f"registered in dvc.yaml and {released['path']}.dvc (not committed or "
                     "tagged: --no-tag)")
    gated = gate_line(metrics)
    if gated:
        lines.append(gated)
    lines.append(f"ask it: edgerag ask \"your question\" --release {released['path']}")
    return "\n".join(lines)


def main(name: str | None, run: str | None, tag: bool, delta_from: str | None = None) -> None:
    root = Path.cwd()
    if delta_from:  # before any work: a wrong path should not cost a promote
        bundle.open_release(delta_from)
    released = promote(root, name, run, tag)
    print(report(released))
    if delta_from:
        from pipeline.release import delta

        old = bundle.open_release(delta_from)
        if old.manifest_sha256 == bundle.open_release(root / released["path"]).manifest_sha256:
            print(f"no delta: {delta_from} is this very release")
            return
        out = root / DELTAS / f"{released['name']}-from-{old.manifest_sha256[:12]}"
        delta.main_write(delta_from, str(root / released["path"]), str(out))
