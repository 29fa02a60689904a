"""The `edgerag` command: parse arguments, then call one library function."""

from __future__ import annotations

import argparse
import sys

from pipeline import artifacts, conf, config, errors, params_file


def configure(overrides: list[str], output: str) -> None:
    """Compose conf/ with Hydra overrides, validate, and write params.yaml atomically."""
    from pathlib import Path

    from pipeline import validation

    if Path(output).is_dir():
        raise errors.BadInput(f"--output {output} is a folder; give the params file's path "
                              "(e.g. params.yaml).")
    typed = params_file.validate(conf.compose(overrides))
    validation.check(typed)
    artifacts.atomic_write_text(output, conf.params_text(typed, overrides))
    print(f"wrote {output} (model={typed.model.name}, quant={typed.quant.name}, "
          f"backend={typed.backend.name})")


def verify(path: str) -> None:
    artifact = artifacts.verify(path)
    files = artifact.manifest.get("files", {})
    print(f"{path}: {len(files)} files match manifest.json "
          f"(stage {artifact.manifest.get('stage', '?')}).")


# Each command's documentation page (docs/, built with `mkdocs build`).
DOCS = {"configure": "build", "verify": "reliability", "sweep": "sweeps", "promote": "releases",
        "delta": "releases", "apply-delta": "releases", "release": "documents",
        "ask": "answers", "bench": "benchmarks"}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgerag", description="Compile a private, on-device RAG stack: an LLM .pte, an "
        "embedder .pte and the index of your documents, released with proof that it is good.",
        epilog="docs: docs/index.md (a page per topic; `mkdocs build` makes the site)")
    commands = parser.add_subparsers(dest="command", required=True)
    cfg = commands.add_parser("configure", help="compose conf/ into params.yaml")
    cfg.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. quant=8da4w_g64")
    cfg.add_argument("--output", default=config.PARAMS_FILE)
    ver = commands.add_parser("verify", help="check an artifact's or release's manifest")
    ver.add_argument("path")
    swp = commands.add_parser("sweep", help="Hydra multirun, one DVC experiment per job")
    swp.add_argument("-m", "--multirun", nargs="*", action="extend", default=[],
                     metavar="OVERRIDE", help="as in Hydra (a sweep always is a multirun); "
                     "the overrides may follow it")
    swp.add_argument("overrides", nargs="*",
                     help="Hydra overrides, e.g. quant=8da4w_g32,8da4w_g64 backend=xnnpack")
    swp.add_argument("--name", help="sweeps/NAME and experiments NAME-<job> (default: the time); "
                     "an existing NAME with the same overrides resumes it")
    swp.add_argument("--jobs", type=int, default=1,
                     help="jobs at once, each a DVC queue worker in its own workspace (default 1)")
    swp.add_argument("--threads", type=int, default=None,
                     help="threads per job (default: the cores divided by --jobs)")
    swp.add_argument("--cluster", metavar="ADDRESS",
                     help="run the jobs on the Dask scheduler at ADDRESS (tcp://host:8786), "
                     "sharing builds through origin and the default DVC remote")
    pro = commands.add_parser("promote", help="ship the best built run as releases/NAME/")
    pro.add_argument("--name", help="release name (default: release.name in params.yaml)")
    pro.add_argument("--run", help="a DVC experiment to ship (default: the release rule's pick)")
    pro.add_argument("--no-tag", action="store_true", help="no git commit and no GTO tag")
    pro.add_argument("--delta-from", metavar="OLD_RELEASE",
                     help="also write deltas/NAME-from-<old>/ for devices holding OLD_RELEASE "
                     "(a release folder, e.g. from `dvc artifacts get . NAME --rev v0.0.1`)")
    dlt = commands.add_parser("delta", help="what a device needs to go from one release to another")
    dlt.add_argument("old")
    dlt.add_argument("new")
    dlt.add_argument("--out", required=True)
    app = commands.add_parser("apply-delta", help="update an installed release with a delta")
    app.add_argument("delta")
    app.add_argument("--release", default="releases/default")
    rel = commands.add_parser("release", help="what `make release` runs: dvc repro, then "
                              "promote and verify the release")
    rel.add_argument("--no-tag", action="store_true", help="no git commit and no GTO tag")
    rel.add_argument("overrides", nargs="*", help="configure with these first (`corpus=dir "
                     "corpus.path=~/docs`); without any, build params.yaml as it is")
    ask = commands.add_parser("ask", help="answer from a release's documents, on this machine")
    ask.add_argument("question", nargs="?", help="omit to read one question per stdin line")
    ask.add_argument("--release", default="releases/default")
    ask.add_argument("--k", type=int, default=None,
                     help="chunks to retrieve (default: retrieval.k of the release's build)")
    ask.add_argument("--max-new-tokens", type=int, default=128)
    ask.add_argument("--json", action="store_true", help="one JSON object per answer")
    ask.add_argument("--verbose", action="store_true",
                     help="also show ExecuTorch's own log lines (hidden by default)")
    commands.add_parser("bench", add_help=False,
                        help="edgerag against export_llm and llama.cpp (bench/; --help there)")
    for action in commands._choices_actions:  # argparse keeps each command's help only here
        command = commands.choices[action.dest]
        command.description = f"{action.help[0].upper()}{action.help[1:]}."
        command.epilog = f"docs: docs/{DOCS[action.dest]}.md"
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = _parser()
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:  # the bench owns its flags; it runs from a source checkout
        from bench.run import main as bench

        errors.run(lambda: bench(argv[1:]))
        return
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        sys.exit(2 if exit_.code else 0)
    if args.command == "configure":
        errors.run(lambda: configure(args.overrides, args.output))
    elif args.command == "verify":
        errors.run(lambda: verify(args.path))
    elif args.command == "sweep":
        from pipeline.experiments import sweep

        errors.run(lambda: sweep.run(args.overrides + args.multirun, args.name, args.jobs,
                                      args.threads, args.cluster))
    elif args.command == "promote":
        from pipeline.release import promote

        errors.run(lambda: promote.main(args.name, args.run, not args.no_tag, args.delta_from))
    elif args.command == "delta":
        from pipeline.release import delta

        errors.run(lambda: delta.main_write(args.old, args.new, args.out))
    elif args.command == "apply-delta":
        from pipeline.release import delta

        errors.run(lambda: delta.main_apply(args.delta, args.release))
    elif args.command == "release":
        from pipeline.release import recipe

        def release() -> None:
            if args.overrides:
                configure(args.overrides, config.PARAMS_FILE)
            recipe.main(not args.no_tag)

        errors.run(release)
    elif args.command == "ask":
        from pipeline.device import ask

        errors.run(lambda: ask.main(args.question, args.release, args.k, args.max_new_tokens,
                                    args.json, args.verbose))


if __name__ == "__main__":
    main()
