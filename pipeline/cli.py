"""The `edgerag` command: parse arguments, then call one library function."""

from __future__ import annotations

import argparse
import sys

from pipeline import artifacts, config, errors


def configure(overrides: list[str], output: str) -> None:
    """Compose conf/ with Hydra overrides, validate, and write params.yaml atomically."""
    composed = config.compose(overrides)
    typed = config.validate(composed)
    artifacts.atomic_write_text(output, config.params_text(typed, overrides))
    print(f"wrote {output} (model={typed.model.name}, quant={typed.quant.name}, "
          f"backend={typed.backend.name})")


def verify(path: str) -> None:
    artifact = artifacts.verify(path)
    files = artifact.manifest.get("files", {})
    print(f"{path}: {len(files)} files match manifest.json "
          f"(stage {artifact.manifest.get('stage', '?')}).")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgerag", description=__doc__)
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
    swp.add_argument("--name", help="sweeps/NAME and experiments NAME-<job> (default: the time)")
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        sys.exit(2 if exit_.code else 0)
    if args.command == "configure":
        errors.run(lambda: configure(args.overrides, args.output))
    elif args.command == "verify":
        errors.run(lambda: verify(args.path))
    elif args.command == "sweep":
        from pipeline.release import sweep

        errors.run(lambda: sweep.run(args.overrides + args.multirun, args.name))


if __name__ == "__main__":
    main()
