"""Fetch the LLM's weights and tokenizer into one normalized transformers folder (data/model)."""

from pipeline import errors, params_file
from pipeline.llm import checkpoint
from stages import output

STAGE = "fetch_model"


def main() -> None:
    cfg = params_file.load()
    with output(STAGE, cfg, byte_identical=True) as out:
        out.notes.update(checkpoint.fetch(cfg.model, out.path))


if __name__ == "__main__":
    errors.run(main)
