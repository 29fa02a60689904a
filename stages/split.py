"""Split the held-out text into calibration and evaluation documents that never overlap."""

from pipeline import errors, layout, params_file, splits
from stages import output

STAGE = "split"


def main() -> None:
    cfg = params_file.load()
    calibration, evaluation = splits.split(cfg.calibration)
    with output(STAGE, cfg, byte_identical=True) as out:
        splits.write_jsonl(out / layout.CALIBRATION_SPLIT, calibration)
        splits.write_jsonl(out / layout.EVALUATION_SPLIT, evaluation)
        out.note("calibration_documents", len(calibration))
        out.note("evaluation_documents", len(evaluation))


if __name__ == "__main__":
    errors.run(main)
