"""Measurements of ``bench/gpu_check.sh`` that run inside one Python process each.

``python bench/gpu_check_probes.py <probe> --device cuda|cpu [...]`` prints its progress, then
one JSON line (the last line starting with ``{``) that ``bench/gpu_check_run.py`` reads:

- ``environment``: GPU, driver, torch / CUDA / cuDNN versions, and the torch the lock wants;
- ``loop``: images/s of the classifier's fine-tuning loop (``stages.engine.loop.fine_tune``,
  full strategy) on ``--device`` against the same loop on the CPU, and on CUDA proof that the
  step ran in bf16 autocast with channels_last activations;
- ``onnx``: onnxruntime on the exported model with the CUDA provider (CPU in the dry run),
  its latency and its largest difference from the CPU provider.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
import tomllib
from importlib import metadata
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def locked_versions(names: tuple[str, ...]) -> dict[str, str]:
    """Versions that uv.lock pins for ``names`` (the checkout's lock, read without uv)."""
    lock = tomllib.loads((REPO / "uv.lock").read_text(encoding="utf-8"))
    return {p["name"]: p.get("version", "?") for p in lock.get("package", []) if p["name"] in names}


def installed(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def environment(_args: argparse.Namespace) -> dict[str, Any]:
    import torch

    names = ("torch", "torchvision", "timm", "ultralytics", "onnxruntime", "numpy", "pandas")
    locked = locked_versions(names)
    versions = {name: installed(name) for name in names}
    warnings = [
        f"{name} {versions[name]} is installed but uv.lock pins {locked[name]}"
        for name in names
        if name in locked and versions[name] and str(versions[name]).split("+")[0] != locked[name]
    ]
    facts: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_locked": locked.get("torch"),
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "cuda_available": torch.cuda.is_available(),
        "versions": versions,
        "locked": locked,
        "warnings": warnings,
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        facts |= {
            "gpu_name": props.name,
            "gpu_count": torch.cuda.device_count(),
            "gpu_memory_gib": round(props.total_memory / 2**30, 1),
            "capability": f"{props.major}.{props.minor}",
            "bf16": torch.cuda.is_bf16_supported(),
            "driver": _driver(),
        }
    for warning in warnings:
        print(f"warning: {warning}")
    return facts


def _driver() -> str | None:
    try:
        done = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip().splitlines()[0] if done.returncode == 0 and done.stdout.strip() else None


def loop(args: argparse.Namespace) -> dict[str, Any]:
    """One timed epoch of ``fine_tune`` per device after a warm-up epoch, no augmentation."""
    import pandas as pd
    import torch

    import stages  # noqa: F401  (offline environment)
    from stages.core.params import TrainSection
    from stages.dataprep.torch_datasets import ImageDataset
    from stages.engine.loop import fine_tune
    from stages.models.backbones import create_classifier

    suffixes = {".jpg", ".jpeg", ".png"}
    files = sorted(p for p in Path(args.source).rglob("*") if p.suffix.lower() in suffixes)
    if len(files) < 2:
        raise SystemExit(f"no images under {args.source}")
    rows = pd.DataFrame(
        {
            "path": [p.relative_to(args.source).as_posix() for p in files],
            "sha256": [p.name for p in files],  # only read with an augmentation policy (none here)
            "label": [p.parent.name for p in files],
        }
    )
    classes = sorted(rows["label"].unique())
    backbone = create_classifier("efficientnet_lite0", "offline", len(classes), args.image_size)
    cfg = TrainSection(
        strategy="full",
        epochs=1,
        batch_size=args.batch,
        lr=1e-4,
        backbone_lr_mult=1.0,
        weight_decay=0.0,
        schedule="constant",
        amp=True,
        num_workers=args.workers,
    )
    device = torch.device(args.device)
    seen: dict[str, Any] = {}

    def record(_module, _inputs, output) -> None:  # the first conv's output: dtype and layout
        seen["dtype"] = str(output.dtype)
        seen["channels_last"] = bool(output.is_contiguous(memory_format=torch.channels_last))

    first_conv = next(m for m in backbone.model.modules() if isinstance(m, torch.nn.Conv2d))
    hook = first_conv.register_forward_hook(record)

    def images_per_s(on: torch.device, count: int, tmp: Path, label: str) -> float:
        subset = rows.iloc[[round(i * len(rows) / count) % len(rows) for i in range(count)]]
        dataset = ImageDataset(subset, Path(args.source), classes, backbone.preprocessing)
        warm = ImageDataset(subset.iloc[: args.batch * 2], Path(args.source), classes, backbone.preprocessing)
        fine_tune(backbone.model, warm, None, cfg, 0, on, tmp / f"{label}-warm.pt")
        if on.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        fine_tune(backbone.model, dataset, None, cfg, 0, on, tmp / f"{label}-timed.pt")
        if on.type == "cuda":
            torch.cuda.synchronize()
        return count / (time.perf_counter() - started)

    with tempfile.TemporaryDirectory(prefix="gpu_check_loop_") as tmp:
        device_ips = images_per_s(device, args.images, Path(tmp), "device")
        on_device = dict(seen)
        hook.remove()
        backbone.model.to(memory_format=torch.contiguous_format)
        cpu_ips = images_per_s(torch.device("cpu"), args.cpu_images, Path(tmp), "cpu")
    if device.type == "cuda" and (
        on_device.get("dtype") != "torch.bfloat16" or not on_device["channels_last"]
    ):
        raise SystemExit(f"the CUDA step did not run in bf16 + channels_last: first conv output {on_device}")
    result = {
        "device": str(device),
        "images": args.images,
        "cpu_images": args.cpu_images,
        "batch": args.batch,
        "workers": args.workers,
        "image_size": backbone.preprocessing.input_size,
        "device_images_per_s": round(device_ips, 1),
        "cpu_images_per_s": round(cpu_ips, 1),
        "first_conv_output": on_device,
    }
    if device.type == "cuda":
        result["peak_gpu_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return result


def onnx(args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np
    import onnxruntime as ort

    available = ort.get_available_providers()
    wanted = "CUDAExecutionProvider" if args.device == "cuda" else "CPUExecutionProvider"
    if wanted not in available:  # recorded as "not available", not a failure: see step_onnx
        return {
            "unavailable": f"onnxruntime {ort.__version__} has no {wanted} (available: "
            f"{', '.join(available)}); the lock installs the CPU-only onnxruntime wheel and the CUDA "
            "provider needs onnxruntime-gpu, which replaces it (not locked: one environment cannot "
            "hold both, and its wheel is far over the device's 64 MiB transfer)"
        }
    session = ort.InferenceSession(args.model, providers=[wanted, "CPUExecutionProvider"])
    if session.get_providers()[0] != wanted:
        raise SystemExit(f"the session fell back to {session.get_providers()[0]} instead of {wanted}")
    reference = ort.InferenceSession(args.model, providers=["CPUExecutionProvider"])
    first = session.get_inputs()[0]
    shape = [d if isinstance(d, int) and d > 0 else None for d in first.shape]
    batch = shape[0] or args.batch
    size = [d or args.image_size for d in shape[1:]]
    x = np.random.default_rng(0).standard_normal((batch, *size)).astype(np.float32)
    feed = {first.name: x}
    for _ in range(3):
        session.run(None, feed)
    timings, outputs = [], session.run(None, feed)
    for _ in range(args.repeats):
        started = time.perf_counter()
        outputs = session.run(None, feed)
        timings.append(time.perf_counter() - started)
    expected = reference.run(None, feed)
    diff = max(
        float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) for a, b in zip(outputs, expected, strict=True)
    )
    return {
        "provider": session.get_providers()[0],
        "onnxruntime": ort.__version__,
        "batch": batch,
        "input_shape": [batch, *size],
        "ms_per_batch": round(sorted(timings)[len(timings) // 2] * 1000, 3),
        "max_abs_diff": diff,
    }


PROBES = {"environment": environment, "loop": loop, "onnx": onnx}


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("probe", choices=sorted(PROBES))
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--source", type=Path)
    parser.add_argument("--images", type=int, default=384)
    parser.add_argument("--cpu-images", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=None)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--model", type=Path)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    if args.probe == "onnx" and args.image_size is None:
        args.image_size = 224
    print(json.dumps(PROBES[args.probe](args), default=str), flush=True)


if __name__ == "__main__":
    main()
