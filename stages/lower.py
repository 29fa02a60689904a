"""Lower the quantized LLM to `data/lowered/llm.pte` for the backend in params `backend`."""

from pipeline import artifacts, errors, layout, params_file
from pipeline.llm import lower
from stages import output

STAGE = "lower"


def main() -> None:
    cfg = params_file.load()
    lower.check_backend_ready(cfg.backend)  # a missing SDK is named before inputs are re-hashed
    inputs = [artifacts.require(p) for p in (layout.QUANTIZED, layout.MODEL)]
    quantized, model = inputs
    with output(STAGE, cfg, inputs=inputs, byte_identical=True) as out:
        out.notes.update(lower.run(cfg, quantized.path, model.path, out.path))


if __name__ == "__main__":
    errors.run(main)
