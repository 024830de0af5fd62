"""Batch prediction with an exported (.onnx) or trained (.pt) model.

``python -m pipelines.predict MODEL INPUTS... [--out FILE] [--save-images DIR] [--batch N]
[--conf C] [--iou I] [--threads T]``

INPUTS are files, folders (searched recursively for images) or glob patterns. The model's own
metadata gives the preprocessing, classes and thresholds (``--conf``/``--iou`` override them for
a detector). ``--out`` ending in ``.csv`` writes CSV (top-k or boxes as JSON text), anything else
JSON Lines (the same objects ``pipelines.serve`` answers); without it, JSON Lines on stdout.
An image that cannot be read becomes a row with its error and the run goes on. A ``.onnx``
model runs on onnxruntime alone: torch is never imported.
"""

from __future__ import annotations

import pipelines  # noqa: F401  (offline environment first)

# isort: split
import argparse
import csv
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from tqdm import tqdm

from stages.core.errors import UserError
from stages.dataprep.imaging import ImageReadError
from stages.serving.images import load_file
from stages.serving.inputs import annotated, copy_target, expand
from stages.serving.predictor import Predictor, load_predictor
from stages.serving.rows import csv_row


def predict_files(
    predictor: Predictor,
    files: list[Path],
    batch: int = 16,
    thresholds: dict[str, float] | None = None,
    save_images: Path | None = None,
) -> Iterator[dict[str, Any]]:
    """One record per file, in order: ``{"file", "error"}`` or ``{"file", **prediction}``."""
    info = predictor.info
    thresholds = {k: v for k, v in (thresholds or {}).items() if v is not None}
    if save_images is not None:
        save_images.mkdir(parents=True, exist_ok=True)
    taken: set[Path] = set()
    with tqdm(total=len(files), desc="predict", unit="img", file=sys.stderr) as bar:
        for start in range(0, len(files), batch):
            chunk = files[start : start + batch]
            loaded: list[tuple[Path, Any]] = []
            records: dict[Path, dict[str, Any]] = {}
            for path in chunk:
                try:
                    loaded.append((path, load_file(path, info.max_pixels)))
                except ImageReadError as exc:
                    records[path] = {"file": str(path), "error": exc.detail}
            if loaded:
                images = [image for _, image in loaded]
                results = predictor.predict(images, **thresholds)
                for (path, image), result in zip(loaded, results, strict=True):
                    records[path] = {"file": str(path), "error": None, **result}
                    if save_images is not None:
                        annotated(image, result, info.task).save(copy_target(save_images, path, taken))
            for path in chunk:
                yield records[path]
            bar.update(len(chunk))


@contextmanager
def _output(path: Path | None) -> Iterator[IO[str]]:
    if path is None:
        yield sys.stdout
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as handle:
        yield handle


def write_records(records: Iterator[dict[str, Any]], out: Path | None, task: str) -> tuple[int, int]:
    """Stream records as CSV or JSON Lines; returns (rows, errors)."""
    rows = errors = 0
    with _output(out) as handle:
        writer = None
        for record in records:
            rows += 1
            errors += record["error"] is not None
            if out is not None and out.suffix.lower() == ".csv":
                row = csv_row(record["file"], None if record["error"] else record, record["error"], task)
                if writer is None:
                    writer = csv.DictWriter(handle, fieldnames=list(row))
                    writer.writeheader()
                writer.writerow(row)
            else:
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    return rows, errors


def main(argv: list[str] | None = None) -> int:
    summary = (__doc__ or "").split("\n\n")[0]
    parser = argparse.ArgumentParser(prog="python -m pipelines.predict", description=summary)
    parser.add_argument("model", type=Path, help="a .onnx from stages.export or a .pt from train")
    parser.add_argument("inputs", nargs="+", help="image files, folders or glob patterns")
    parser.add_argument("--out", type=Path, help="output file: .csv, or JSON Lines (default: stdout)")
    parser.add_argument("--save-images", type=Path, help="folder for copies with the predictions drawn")
    parser.add_argument("--batch", type=int, default=16, help="images per forward pass (default 16)")
    parser.add_argument("--conf", type=float, help="detect: confidence threshold (default: the model's)")
    parser.add_argument("--iou", type=float, help="detect: NMS IoU threshold (default: the model's)")
    parser.add_argument("--threads", type=int, help="CPU threads (default: the runtime's)")
    args = parser.parse_args(argv)
    try:
        if args.batch < 1:
            raise UserError("--batch must be at least 1.")
        files = expand(args.inputs)
        predictor = load_predictor(args.model, args.threads)
        records = predict_files(
            predictor, files, args.batch, {"conf": args.conf, "iou": args.iou}, args.save_images
        )
        if predictor.info.task != "detect" and (args.conf is not None or args.iou is not None):
            kind = "classifier" if predictor.info.task == "classify" else "segmentation model"
            raise UserError(f"--conf and --iou apply to a detector; this model is a {kind}.")
        rows, errors = write_records(records, args.out, predictor.info.task)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    where = args.out or "stdout"
    print(f"predicted {rows - errors} of {rows} images -> {where} ({errors} unreadable)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
