"""Deployment benchmarks: PyTorch eager vs onnxruntime vs onnxruntime INT8, and the HTTP service.

1. Export + parity through the export stage's own code (``stages.serving.exporting.export``) on
   the demo classifier (``models/classifier.pt`` with the demo's split, outputs to a temporary
   folder) and on a raccoon_voc detector fine-tuned here for a few epochs (offline start
   checkpoint, ``freeze: 10``, small image size).
2. Latency at batch 1 (p50, p95 over ``--runs`` calls) and throughput at batch 32 of the network
   alone on preprocessed inputs, every engine with the same thread count (``--threads``), warm-up
   calls excluded: PyTorch eager as evaluate runs it (classifier: channels_last, inference mode;
   detector: ultralytics' fused model), onnxruntime FP32 and INT8 (CPU provider).
3. ``pipelines.serve`` with the classifier's ONNX model under 4 and 16 concurrent clients for
   ``--seconds`` each (httpx, one test image per request, multipart): requests/s, p95, errors.
   The load generator runs on the same machine and takes CPU from the service.

    uv run python bench/bench_export.py [--threads 2] [--epochs 5] [--imgsz 256] [--write]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

os.environ.setdefault("TQDM_DISABLE", "1")

import numpy as np

import stages  # noqa: F401  (offline environment)
from bench.common import REPO_ROOT, SHARED_DATASETS, markdown_table, write_section
from stages.core.params import Params, load_params, parse_params

SECTION = "Export, ONNX Runtime and the model service (bench/bench_export.py)"


# --- models ----------------------------------------------------------------------------------------


def classifier_params(root: Path) -> Params:
    """The repository's params (demo classifier, its split) with the export outputs in ``root``."""
    params = load_params(REPO_ROOT / "params.yaml")
    reports = root / "classify_reports"
    reports.mkdir(parents=True, exist_ok=True)
    shutil.copy(params.paths.reports / "metrics.json", reports / "metrics.json")
    paths = params.paths.model_copy(update={"export": root / "classify_export", "reports": reports})
    return params.model_copy(update={"paths": paths})


def detector_params(root: Path, epochs: int, imgsz: int) -> Params:
    paths = {
        k: str(root / "detect" / k) for k in ("interim", "processed", "models", "reports", "cache", "export")
    }
    return parse_params(
        {
            "data": {"source": str(SHARED_DATASETS / "raccoon_voc"), "format": "voc", "task": "detect"},
            "paths": paths,
            "validate": {"workers": 2},
            "augment": {"preview": {"images": 2, "views": 1}},
            "train": {
                "device": "cpu",
                "num_workers": 0,
                "detector": {
                    "epochs": epochs,
                    "image_size": imgsz,
                    "batch": 16,
                    "freeze": 10,
                    "ultralytics": {"plots": False},
                },
            },
            "evaluate": {"bootstrap": 200},
        }
    )


def train_detector(params: Params) -> float:
    from stages import augment, evaluate, ingest, split, train, validate

    started = time.perf_counter()
    for stage in (ingest, validate, split, augment, train, evaluate):
        stage.run(params)
    return time.perf_counter() - started


# --- timing ----------------------------------------------------------------------------------------


ROUNDS = 5  # engines take turns in blocks, so a burst of load on the shared machine hits all of them


def measure(
    fns: dict[str, Callable[[np.ndarray], Any]], one: np.ndarray, many: np.ndarray, runs: int
) -> dict[str, dict]:
    """Batch-1 latency (p50, p95 over ``runs`` calls) and batch-32 images/s per engine.

    Each engine gets ``ROUNDS`` blocks in turn (2 warm-up calls per block, not timed).
    """
    times: dict[str, list[float]] = {name: [] for name in fns}
    rates: dict[str, list[float]] = {name: [] for name in fns}
    per_block = max(1, runs // ROUNDS)
    for _ in range(ROUNDS):
        for name, fn in fns.items():
            for _ in range(2):
                fn(one)
            for _ in range(per_block):
                started = time.perf_counter()
                fn(one)
                times[name].append(time.perf_counter() - started)
            fn(many)
            started = time.perf_counter()
            fn(many)
            rates[name].append(len(many) / (time.perf_counter() - started))
    out = {}
    for name in fns:
        ms = np.array(times[name]) * 1000
        out[name] = {
            "p50_ms": float(np.percentile(ms, 50)),
            "p95_ms": float(np.percentile(ms, 95)),
            "batch32_img_s": float(np.median(rates[name])),
        }
    return out


def engines(params: Params, onnx: Path, int8: Path, threads: int) -> dict[str, Callable[[np.ndarray], Any]]:
    """name -> callable(batch ndarray) -> outputs, all on ``threads`` CPU threads."""
    import torch

    from stages.core.layout import Layout
    from stages.serving.onnx_predictor import OnnxPredictor

    torch.set_num_threads(threads)
    layout = Layout(params.paths)
    if params.data.task == "classify":
        from stages.models.backbones import inference_network
        from stages.models.checkpoints import load_checkpoint

        backbone, _ = load_checkpoint(layout.classifier)
        network = inference_network(backbone.model, torch.device("cpu")).__enter__()

        @torch.inference_mode()
        def eager_classifier(batch: np.ndarray):
            x = torch.from_numpy(batch).contiguous(memory_format=torch.channels_last)
            return torch.softmax(network(x).float(), dim=1)

        eager = eager_classifier
    else:
        from stages.engine.yolo.serving import load_for_serving

        yolo, _ = load_for_serving(layout.detector)
        module = yolo.model.fuse().eval()

        @torch.inference_mode()
        def eager_detector(batch: np.ndarray):
            return module(torch.from_numpy(batch))

        eager = eager_detector

    fp32, q8 = OnnxPredictor(onnx, threads), OnnxPredictor(int8, threads)
    return {"PyTorch eager": eager, "onnxruntime FP32": fp32.run, "onnxruntime INT8": q8.run}


def inputs(params: Params, info, count: int) -> np.ndarray:
    """``count`` preprocessed test images (repeated when the split is smaller)."""
    from stages.core.layout import Layout
    from stages.dataprep.imaging import load_rgb
    from stages.serving.exporting import split_rows
    from stages.serving.preprocess import classify_array, letterbox

    rows = split_rows(Layout(params.paths), "test")
    arrays = []
    for path in rows["path"][:count]:
        image = load_rgb(params.data.source / path)
        if info.task == "classify":
            arrays.append(classify_array(image, info.classify_preprocessing()))
        else:
            arrays.append(letterbox(np.asarray(image), info.detect_preprocessing())[0])
    while len(arrays) < count:
        arrays += arrays[: count - len(arrays)]
    return np.stack(arrays)


def bench_model(params: Params, threads: int, runs: int) -> dict:
    from stages.serving.exporting import ExportFiles, export
    from stages.serving.onnx_predictor import OnnxPredictor

    started = time.perf_counter()
    report = export(params)
    export_s = time.perf_counter() - started
    files = ExportFiles.of(params)
    info = OnnxPredictor(files.onnx).info
    batch32 = inputs(params, info, 32)
    results = measure(engines(params, files.onnx, files.int8, threads), batch32[:1], batch32, runs)
    print(json.dumps(results, indent=1), flush=True)
    return {"report": report, "export_s": export_s, "engines": results}


# --- the service -----------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _load(base: str, image: bytes, clients: int, seconds: float) -> dict:
    import httpx

    latencies: list[float] = []
    errors = 0
    stop = time.perf_counter() + seconds

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal errors
        while time.perf_counter() < stop:
            started = time.perf_counter()
            try:
                answer = await http.post("/predict", files={"file": ("image.jpg", image, "image/jpeg")})
                ok = answer.status_code == 200
            except httpx.HTTPError:
                ok = False
            latencies.append(time.perf_counter() - started)
            errors += not ok

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as http:
        started = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(clients)))
        wall = time.perf_counter() - started
    ms = np.array(latencies) * 1000
    return {
        "clients": clients,
        "requests": len(latencies),
        "requests_s": len(latencies) / wall,
        "p50_ms": float(np.percentile(ms, 50)),
        "p95_ms": float(np.percentile(ms, 95)),
        "errors": errors,
    }


def bench_service(model: Path, image: Path, threads: int, seconds: float) -> list[dict]:
    import httpx

    port = _free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pipelines.serve",
            str(model),
            "--port",
            str(port),
            "--threads",
            str(threads),
            "--log-level",
            "warning",
        ],
        cwd=REPO_ROOT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if httpx.get(f"{base}/health").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        data = image.read_bytes()
        asyncio.run(_load(base, data, 2, 3))  # warm-up
        results = []
        for clients in (4, 16):
            results.append(asyncio.run(_load(base, data, clients, seconds)) | {"load": os.getloadavg()[0]})
            print(results[-1], flush=True)
        return results
    finally:
        server.terminate()
        server.wait(timeout=30)


# --- report ----------------------------------------------------------------------------------------


def render(results: dict) -> str:
    s = results["settings"]
    lines = [
        f"CPU ({s['machine']}, {s['cores']} cores, shared with other jobs while measured), "
        f"{s['threads']} threads "
        f"for every engine, warm-up excluded; batch-1 latency over {s['runs']} calls of the network alone on "
        "preprocessed inputs, batch-32 throughput the median of 5 calls; the engines take turns in 5 "
        "blocks so that load from other jobs falls on all of them. onnxruntime "
        f"{s['onnxruntime']}, torch {s['torch']}.",
        "",
    ]
    for key, title in (("classify", "Demo classifier"), ("detect", "raccoon_voc detector")):
        entry = results.get(key)
        if not entry:
            continue
        r = entry["report"]
        if key == "classify":
            parity = (
                f"parity on {r['images']} test images: max |p_onnx - p_torch| {r['max_abs_diff']:.2e}, "
                f"top-1 agreement {r['top1_agreement']:.3f}; accuracy PyTorch {r['accuracy_pytorch']:.3f}, "
                f"INT8 {r['int8']['accuracy']:.3f} (change {r['int8']['accuracy_change']:+.3f})"
            )
        else:
            parity = (
                f"parity on {r['images']} test images: mAP50-95 PyTorch {r['map50_95_pytorch']:.3f}, "
                f"ONNX {r['map50_95_onnx']:.3f}, INT8 {r['int8']['map50_95']:.3f} "
                f"(change {r['int8']['map50_95_change']:+.3f}); mAP50 PyTorch {r['map50_pytorch']:.3f}, "
                f"ONNX {r['map50_onnx']:.3f}, INT8 {r['int8']['map50']:.3f}"
            )
        lines += [
            f"**{title}** ({entry['what']}); export + parity + INT8 took {entry['export_s']:.0f} s; "
            f"{parity}.",
            "",
        ]
        rows = [
            [name, f"{e['p50_ms']:.1f}", f"{e['p95_ms']:.1f}", f"{e['batch32_img_s']:.1f}"]
            for name, e in entry["engines"].items()
        ]
        lines += [
            markdown_table(["engine", "batch 1 p50 (ms)", "batch 1 p95 (ms)", "batch 32 (img/s)"], rows),
            "",
        ]
    if results.get("service"):
        lines += [
            "**Service** (`pipelines.serve` with the classifier's ONNX model, "
            f"{s['threads']} threads, one uvicorn "
            f"worker; multipart JPEG from the test split; {s['seconds']:.0f} s per level):",
            "",
            markdown_table(
                ["clients", "requests", "requests/s", "p50 (ms)", "p95 (ms)", "errors", "load avg (1 min)"],
                [
                    [
                        r["clients"],
                        r["requests"],
                        f"{r['requests_s']:.1f}",
                        f"{r['p50_ms']:.0f}",
                        f"{r['p95_ms']:.0f}",
                        r["errors"],
                        f"{r['load']:.1f}" if "load" in r else "n/a",
                    ]
                    for r in results["service"]
                ],
            ),
            "",
        ]
    if results.get("notes"):
        lines += [results["notes"], ""]
    lines.append("Reproduce: `uv run python bench/bench_export.py --write`.")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=50, help="batch-1 calls timed per engine")
    parser.add_argument("--epochs", type=int, default=5, help="detector fine-tuning epochs")
    parser.add_argument("--imgsz", type=int, default=256)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--skip", nargs="*", default=[], choices=["classify", "detect", "service"])
    parser.add_argument("--out", type=Path, help="save the raw results as JSON")
    parser.add_argument("--render", type=Path, help="only render a saved --out file")
    parser.add_argument("--notes", type=Path, help="a paragraph to append (targets met or why not)")
    parser.add_argument("--write", action="store_true", help="write the docs/benchmarks.md section")
    parser.add_argument(
        "--work", type=Path, help="keep the work folder here (a rerun reuses the detector run)"
    )
    args = parser.parse_args()
    if args.render:
        results = json.loads(args.render.read_text(encoding="utf-8"))
    else:
        import onnxruntime
        import torch

        settings = {
            "threads": args.threads,
            "runs": args.runs,
            "seconds": args.seconds,
            "machine": platform.machine(),
            "cores": os.cpu_count(),
            "onnxruntime": onnxruntime.__version__,
            "torch": torch.__version__.split("+")[0],
        }
        results: dict = {"settings": settings}
        with tempfile.TemporaryDirectory(prefix="bench-export-") as folder:
            root = args.work or Path(folder)
            if "classify" not in args.skip:
                params = classifier_params(root)
                results["classify"] = bench_model(params, args.threads, args.runs)
                results["classify"]["what"] = f"{params.train.backbone}, {params.data.source}"
            if "detect" not in args.skip:
                params = detector_params(root, args.epochs, args.imgsz)
                train_s = train_detector(params)
                results["detect"] = bench_model(params, args.threads, max(10, args.runs // 3))
                results["detect"]["what"] = (
                    f"offline YOLOv8s-size start, freeze 10, {args.epochs} epochs at "
                    f"imgsz {args.imgsz}, trained in {train_s:.0f} s"
                )
            if "service" not in args.skip and (root / "classify_export" / "model.onnx").is_file():
                params = classifier_params(root)
                from stages.core.layout import Layout
                from stages.serving.exporting import split_rows

                image = params.data.source / split_rows(Layout(params.paths), "test")["path"].iloc[0]
                results["service"] = bench_service(
                    params.paths.export / "model.onnx", image, args.threads, args.seconds
                )
        if args.out:
            args.out.write_text(json.dumps(results, indent=2, default=str), encoding="utf-8")
    if args.notes:
        results["notes"] = args.notes.read_text(encoding="utf-8").strip()
    body = render(results)
    print(body)
    if args.write:
        write_section(SECTION, body)


if __name__ == "__main__":
    main()
