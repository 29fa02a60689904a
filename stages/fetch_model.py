"""Fetch the LLM's weights and tokenizer into one normalized transformers folder (data/model)."""

from pipeline import errors, params_file
from pipeline.llm import checkpoint, gguf_grids
from stages import output

STAGE = "fetch_model"


def main() -> None:
    cfg = params_file.load()
    with output(STAGE, cfg, byte_identical=True) as out:
        out.notes.update(checkpoint.fetch(cfg.model, out.path))
        out.notes.update(gguf_grids.keep(cfg.model.source, out.notes.get("gguf_types", {}),
                                         out.path))


if __name__ == "__main__":
    errors.run(main)
