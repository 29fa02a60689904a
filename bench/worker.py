"""`python -m bench.worker TASK ARGS_JSON OUT`: one measurement in a fresh process, JSON to OUT.

Each system is timed and scored in its own process so that memory, thread pools and imported
libraries never leak from one system into another's figures. The answer goes to a file, not
stdout: the ExecuTorch runner prints there from C++, whose buffer may be flushed after Python's.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

TASKS = {
    "time_pte": "bench.pte:time_generation",
    "ppl_pte": "bench.pte:perplexity_windows",
    "time_llamacpp": "bench.llamacpp:time_generation",
    "ppl_llamacpp": "bench.llamacpp:perplexity_windows",
    "ppl_reference": "bench.quality:reference_windows",
}


def main() -> None:
    task, args, out = sys.argv[1], json.loads(sys.argv[2]), Path(sys.argv[3])
    if "windows_file" in args:
        args["windows"] = json.loads(Path(args.pop("windows_file")).read_text())
    module, function = TASKS[task].split(":")
    result = getattr(importlib.import_module(module), function)(**args)
    out.write_text(json.dumps(result))


if __name__ == "__main__":
    from pipeline.errors import run

    run(main)
