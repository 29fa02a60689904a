"""Write the offline lm-eval tasks (YAML + JSONL) from the evaluation split and docstrings."""

from pipeline import artifacts, errors, layout, params_file
from pipeline.evaluation import tasks
from pipeline.splits import read_jsonl
from stages import output

STAGE = "make_tasks"


def main() -> None:
    cfg = params_file.load()
    split = artifacts.require(layout.SPLIT)
    texts = [record["text"] for record in read_jsonl(split / layout.EVALUATION_SPLIT)]
    with output(STAGE, cfg, inputs=[split], byte_identical=True) as out:
        counts = tasks.write(out.path, texts, cfg.eval.tasks_limit, cfg.eval.tasks_seed,
                             layout.TASKS)
        out.note("documents", counts)


if __name__ == "__main__":
    errors.run(main)
