"""Export the fp32 LLM with the stock runner's KV cache, custom SDPA and metadata (model.pt2)."""

from pipeline import artifacts, errors, layout, params_file
from pipeline.llm import export
from stages import output

STAGE = "export"


def main() -> None:
    cfg = params_file.load()
    model = artifacts.require(layout.MODEL)
    with output(STAGE, cfg, inputs=[model], byte_identical=True) as out:
        out.notes.update(export.run(model.path, cfg.model, out.path, cfg.backend.name))


if __name__ == "__main__":
    errors.run(main)
