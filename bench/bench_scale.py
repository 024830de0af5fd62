"""The pipeline at 1k, 10k and 50k generated images: time, memory, disk and how each stage scales.

Nobody knew how ingest, validate, split, the feature cache, the YOLO export, evaluate and report
behave at tens of thousands of images. This generates N distinct 64x64 JPEGs (drawn shapes, a few
classes; a folder-per-class set and a detection set with boxes in a COCO JSON), cached under
``/tmp/scale_data/<variant>_<N>`` and never timed, copies the project into ``/tmp/scale_proj_<N>``
and runs each stage there as its own ``uv run --frozen python -m stages.<name>`` under
``/usr/bin/time -v``: wall time, peak RSS of the largest process, the summed RSS of the process
tree (sampled), the bytes of the stage's ``dvc.yaml`` outputs and the growth of ``paths.cache``.
It fits time ~ N^k per stage, times validate's decode against a bare PIL decode of the same files
in the same run, and ingest + validate with 1 and with 2 worker processes.

    uv run --frozen python -m bench.bench_scale --sizes 1000 10000 50000
    uv run --frozen python -m bench.bench_scale --render          # tables from bench/results only
    uv run --frozen python -m bench.bench_scale --dvc 50000       # dvc add / status on 50k files
    uv run --frozen python -m bench.bench_scale --decode-reference  # the decode ratio on photos

Raw results: ``bench/results/scale_<N>.json`` (one per size, rewritten by a rerun of that size),
``dvc_scale_<N>.json`` and ``decode_reference.json``; the scale tables in docs/benchmarks.md are
rendered from every ``scale_<N>.json`` there. Stages run with ``uv run --no-sync``: the scratch
project shares this checkout's environment and must never re-sync it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from PIL import Image, ImageDraw

from bench.common import REPO_ROOT, markdown_table, write_section

DATA_ROOT = Path("/tmp/scale_data")
RESULTS = REPO_ROOT / "bench" / "results"
VENV = REPO_ROOT / ".venv"
SIDE = 64
CLASSES = ("circle", "square", "triangle", "cross")
CLASSIFY_STAGES = ("ingest", "validate", "split", "label_issues", "augment", "train", "evaluate", "report")
DETECT_STAGES = ("ingest", "validate", "split", "yolo_export")
TARGET_RSS_MB = 2048
TARGET_EXPONENT = 1.15
TARGET_DECODE_RATIO = 1.3
TARGET_TWO_WORKER_SPEEDUP = 1.5  # "every core used": 2 processes at least 1.5x one
# Not copied into the scratch project: outputs, caches, environments (paths from the repo root).
COPY_EXCLUDES = frozenset(
    {
        ".venv",
        ".git",
        ".dvc/cache",
        ".dvc/tmp",
        "data/cache",
        "data/interim",
        "data/processed",
        "models",
        "reports",
        "export",
        "bench/out",
        "bench/gpu_pack",
        "bench/results",
        "tune",
    }
)
ANYWHERE_EXCLUDES = frozenset({"__pycache__", ".pytest_cache", ".ruff_cache", ".venv"})


# ---------------------------------------------------------------- generation


def _colour(rng: np.random.Generator) -> tuple[int, int, int]:
    r, g, b = rng.integers(0, 256, size=3)
    return int(r), int(g), int(b)


def _shape(draw: ImageDraw.ImageDraw, kind: str, box: tuple[int, int, int, int], fill: tuple) -> None:
    x0, y0, x1, y1 = box
    if kind == "circle":
        draw.ellipse(box, fill=fill)
    elif kind == "square":
        draw.rectangle(box, fill=fill)
    elif kind == "triangle":
        draw.polygon([((x0 + x1) // 2, y0), (x1, y1), (x0, y1)], fill=fill)
    else:  # cross
        w = max(2, (x1 - x0) // 4)
        cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
        draw.rectangle((cx - w // 2, y0, cx + w // 2, y1), fill=fill)
        draw.rectangle((x0, cy - w // 2, x1, cy + w // 2), fill=fill)


def _background(rng: np.random.Generator) -> Image.Image:
    """A random 4x4 colour field, upsampled: low frequencies of its own, which the hashes read."""
    grid = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
    return Image.fromarray(grid).resize((SIDE, SIDE), Image.Resampling.BICUBIC)


def _clutter(draw: ImageDraw.ImageDraw, rng: np.random.Generator) -> None:
    """Random lines and blobs: they make every image's perceptual hash its own."""
    for _ in range(int(rng.integers(4, 8))):
        x0, y0, x1, y1 = (int(v) for v in rng.integers(0, SIDE, size=4))
        if rng.random() < 0.5:
            draw.line((x0, y0, x1, y1), fill=_colour(rng), width=int(rng.integers(1, 4)))
        else:
            draw.ellipse((min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)), outline=_colour(rng))


def _random_box(rng: np.random.Generator, low: int, high: int) -> tuple[int, int, int, int]:
    size = int(rng.integers(low, high))
    x0, y0 = (int(v) for v in rng.integers(0, SIDE - size, size=2))
    return x0, y0, x0 + size, y0 + size


def draw_classify(seed: int, kind: str) -> Image.Image:
    """One image of class ``kind``: random background, clutter, then the shape itself."""
    rng = np.random.default_rng(seed)
    image = _background(rng)
    draw = ImageDraw.Draw(image)
    _clutter(draw, rng)
    _shape(draw, kind, _random_box(rng, SIDE // 3, SIDE - 4), _colour(rng))
    return image


def draw_detect(seed: int) -> tuple[Image.Image, list[tuple[str, tuple[int, int, int, int]]]]:
    """An image with 1 to 3 shapes and their boxes (x0, y0, x1, y1 in pixels)."""
    rng = np.random.default_rng(seed)
    image = _background(rng)
    draw = ImageDraw.Draw(image)
    _clutter(draw, rng)
    objects = []
    for _ in range(int(rng.integers(1, 4))):
        kind = CLASSES[int(rng.integers(len(CLASSES)))]
        box = _random_box(rng, 12, SIDE // 2)
        _shape(draw, kind, box, _colour(rng))
        objects.append((kind, box))
    return image, objects


def _complete(root: Path, n: int) -> bool:
    marker = root / ".complete"
    return marker.is_file() and marker.read_text(encoding="utf-8").strip() == str(n)


def generate_classify(n: int, root: Path | None = None) -> Path:
    """N JPEGs in ``<class>/<i>.jpg``, balanced over CLASSES; reused when already complete."""
    root = root or DATA_ROOT / f"classify_{n}"
    if _complete(root, n):
        return root
    shutil.rmtree(root, ignore_errors=True)
    for kind in CLASSES:
        (root / kind).mkdir(parents=True)
    for i in range(n):
        kind = CLASSES[i % len(CLASSES)]
        draw_classify(i, kind).save(root / kind / f"{i:06d}.jpg", quality=90)
    (root / ".complete").write_text(str(n), encoding="utf-8")
    return root


def generate_detect(n: int, root: Path | None = None) -> Path:
    """N JPEGs in ``images/`` and their boxes in ``annotations.json`` (COCO)."""
    root = root or DATA_ROOT / f"detect_{n}"
    if _complete(root, n):
        return root
    shutil.rmtree(root, ignore_errors=True)
    (root / "images").mkdir(parents=True)
    images, annotations = [], []
    for i in range(n):
        image, objects = draw_detect(1_000_000_000 + i)
        name = f"{i:06d}.jpg"
        image.save(root / "images" / name, quality=90)
        images.append({"id": i, "file_name": name, "width": SIDE, "height": SIDE})
        for kind, (x0, y0, x1, y1) in objects:
            annotations.append(
                {
                    "id": len(annotations),
                    "image_id": i,
                    "category_id": CLASSES.index(kind) + 1,
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "area": (x1 - x0) * (y1 - y0),
                    "iscrowd": 0,
                }
            )
    categories = [{"id": i + 1, "name": kind} for i, kind in enumerate(CLASSES)]
    doc = {"images": images, "annotations": annotations, "categories": categories}
    (root / "annotations.json").write_text(json.dumps(doc), encoding="utf-8")
    (root / ".complete").write_text(str(n), encoding="utf-8")
    return root


# ---------------------------------------------------------------- fitting


def fit_exponent(sizes: Sequence[float], seconds: Sequence[float]) -> float:
    """Least-squares slope of log(time) against log(N): time ~ N^k gives k."""
    if len(sizes) < 2 or len(set(sizes)) < 2:
        raise ValueError("an exponent needs at least two different sizes")
    slope, _ = np.polyfit(np.log(np.asarray(sizes, float)), np.log(np.asarray(seconds, float)), 1)
    return float(slope)


def parallel_efficiency(t1: float, t2: float, workers: int = 2) -> float:
    """Speed-up per worker: 1.0 is perfect, 1/workers means no gain."""
    return t1 / t2 / workers


def amdahl_speedup(efficiency: float, workers: int, cores: int) -> float:
    """Speed-up on ``cores`` predicted from the efficiency measured with ``workers`` (Amdahl's law)."""
    speedup = efficiency * workers
    serial = (workers / speedup - 1) / (workers - 1)  # Amdahl's serial fraction from the 2-worker speed-up
    serial = min(max(serial, 0.0), 1.0)
    return 1 / (serial + (1 - serial) / cores)


# ---------------------------------------------------------------- running stages


@dataclass
class StageRun:
    stage: str
    wall_s: float
    max_rss_mb: float  # the largest single process (GNU time)
    tree_rss_mb: float  # the whole process tree, summed, sampled every 0.25 s
    out_mb: float  # the stage's dvc.yaml outputs (hardlinked files counted 0)
    cache_mb: float  # growth of paths.cache during the stage
    rc: int


def _tree_rss(pid: int) -> float:
    try:
        import psutil
    except ImportError:
        return 0.0
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0.0
    total = 0
    for proc in procs:
        try:
            total += proc.memory_info().rss
        except psutil.Error:
            continue
    return total / 2**20


def disk_mb(paths: Sequence[Path]) -> float:
    """Bytes on disk of the files under ``paths`` (allocated blocks); a hardlinked file counts 0."""
    total, seen = 0, set()
    for path in paths:
        files = [path] if path.is_file() else (p for p in path.rglob("*") if p.is_file())
        for file in files:
            st = file.lstat()
            if st.st_nlink > 1 or (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            total += st.st_blocks * 512
    return total / 2**20


def timed_command(
    cmd: list[str], cwd: Path, log: Path, env: dict[str, str]
) -> tuple[int, float, float, float]:
    """Run ``cmd`` under ``/usr/bin/time -v``: (rc, wall s, largest process's RSS MB, tree RSS MB)."""
    timing = log.with_suffix(".time")
    full = ["/usr/bin/time", "-v", "-o", str(timing), *cmd]
    peak = 0.0
    with log.open("w", encoding="utf-8") as out:
        started = time.perf_counter()
        proc = subprocess.Popen(full, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, env=env)
        stop = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not stop.wait(0.25):
                peak = max(peak, _tree_rss(proc.pid))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        rc = proc.wait()
        wall = time.perf_counter() - started
        stop.set()
        sampler.join()
    text = timing.read_text(encoding="utf-8") if timing.is_file() else ""
    match = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    rss = int(match.group(1)) / 1024 if match else 0.0
    return rc, wall, rss, peak


def stage_outputs(project: Path, params: dict, stage: str) -> list[Path]:
    """The ``outs``/``metrics`` paths of ``stage`` in the project's dvc.yaml, templated from params."""
    if stage == "yolo_export":
        return []  # the export lives in paths.cache/yolo_dataset (not a DVC output): see cache_mb
    spec = yaml.safe_load((project / "dvc.yaml").read_text(encoding="utf-8"))["stages"][stage]

    def resolve(text: str) -> str:
        def value(m: re.Match[str]) -> str:
            node: Any = params
            for key in m.group(1).split("."):
                node = node[key]
            return str(node)

        return re.sub(r"\$\{([^}]+)\}", value, text)

    paths = []
    for entry in [*spec.get("outs", []), *spec.get("metrics", [])]:
        name = entry if isinstance(entry, str) else next(iter(entry))
        paths.append(project / resolve(name))
    return [p for p in paths if p.exists()]


def stage_command(stage: str, params_file: str) -> list[str]:
    module = "bench.bench_scale" if stage == "yolo_export" else f"stages.{stage}"
    extra = ["--yolo-export", params_file] if stage == "yolo_export" else ["--params", params_file]
    return ["uv", "run", "--frozen", "--no-sync", "python", "-m", module, *extra]


def run_stage(project: Path, params: dict, params_file: str, stage: str, logs: Path) -> StageRun:
    env = os.environ | {"UV_PROJECT_ENVIRONMENT": str(VENV)}
    cache = project / params["paths"]["cache"]
    cache_before = disk_mb([cache]) if cache.exists() else 0.0
    rc, wall, rss, tree = timed_command(
        stage_command(stage, params_file), project, logs / f"{Path(params_file).stem}_{stage}.log", env
    )
    cache_after = disk_mb([cache]) if cache.exists() else 0.0
    out = disk_mb(stage_outputs(project, params, stage))
    run = StageRun(stage, wall, rss, tree, out, cache_after - cache_before, rc)
    print(
        f"    {stage}: {wall:.1f} s, RSS {rss:.0f} MB (tree {tree:.0f}), out {out:.1f} MB, "
        f"cache +{run.cache_mb:.1f} MB, rc {rc}",
        flush=True,
    )
    if rc != 0:
        raise RuntimeError(f"{stage} failed (rc {rc}); see {logs / f'{Path(params_file).stem}_{stage}.log'}")
    return run


def yolo_export_main(params_file: Path) -> None:
    """What the detector trainer does before ultralytics starts: export the split into its layout."""
    from stages.core.contracts import read_classes, read_parquet
    from stages.core.layout import Layout
    from stages.core.params import load_params
    from stages.dataprep.yolo_export import export_dataset

    params = load_params(params_file)
    layout = Layout(params.paths)
    frame = read_parquet(layout.manifest).merge(
        read_parquet(layout.splits), on="image_id", suffixes=("_source", "")
    )
    result = export_dataset(
        frame,
        read_parquet(layout.boxes),
        read_classes(layout.classes),
        params.data.source,
        layout.yolo_dataset,
    )
    print(result)


# ---------------------------------------------------------------- the scratch project


def prepare_project(n: int) -> Path:
    """A copy of the checkout's code and params in ``/tmp/scale_proj_<n>`` (a fresh git repo)."""
    project = Path(f"/tmp/scale_proj_{n}")
    shutil.rmtree(project, ignore_errors=True)

    def ignore(folder: str, names: list[str]) -> set[str]:
        rel = Path(folder).relative_to(REPO_ROOT)
        return {n for n in names if n in ANYWHERE_EXCLUDES or (rel / n).as_posix() in COPY_EXCLUDES}

    shutil.copytree(REPO_ROOT, project, ignore=ignore, symlinks=True)
    git = ["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost"]
    subprocess.run([*git, "init", "-q"], cwd=project, check=True)
    subprocess.run([*git, "add", "-A"], cwd=project, check=True)  # DVCLive (train) needs a commit
    subprocess.run([*git, "commit", "-q", "-m", "scale bench"], cwd=project, check=True)
    return project


def _has_field(section: str, field: str) -> bool:
    from stages.core.params import Params

    model = Params.model_fields[section].annotation
    return field in getattr(model, "model_fields", {})


def scale_params(source: Path, task: str, workers: int, prefix: str = "") -> dict:
    """params.yaml for the scratch project: the repo's, pointed at the generated set, made small."""
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text(encoding="utf-8"))
    params["data"] |= {
        "source": str(source),
        "task": task,
        "format": "folder" if task == "classify" else "coco",
    }
    params["data"]["annotations"] = "annotations.json" if task == "detect" else None
    if prefix:
        params["paths"] = {k: f"{prefix}/{v}" for k, v in params["paths"].items()}
    params["validate"]["workers"] = workers
    params["split"]["near_duplicates"]["workers"] = workers
    if _has_field("ingest", "workers"):
        params["ingest"]["workers"] = workers
    params["label_issues"]["enabled"] = False
    params["train"] |= {
        "backbone": "efficientnet_lite0",
        "strategy": "linear_probe",
        "image_size": 32,  # the smallest the params allow: the forward pass is not what scales badly
        "epochs": 3,
        "aug_views": 0,  # features of each image once: the train stage's cost is the forward pass
        "batch_size": 256,
        "feature_batch_size": 256,
        "patience": 3,
    }
    params["evaluate"]["bootstrap"] = 200
    return params


def write_params(project: Path, name: str, params: dict) -> str:
    (project / name).write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    return name


# ---------------------------------------------------------------- decode ratio


def decode_ratio(files: list[Path], repeats: int = 3) -> dict[str, float]:
    """validate's per-file decode (header, refusal check, EXIF, RGB) against bare ``open().load()``.

    Both run in this process over the same files, interleaved, after one pass that warms the
    page cache; the medians of ``repeats`` are compared.
    """
    from stages.dataprep.imaging import allowed_formats
    from stages.dataprep.integrity import inspect_image

    formats = allowed_formats()

    def bare() -> None:
        for file in files:
            with Image.open(file) as image:
                image.load()

    def validate() -> None:
        for file in files:
            inspect_image(file, 89_478_485, formats)

    bare()
    times: dict[str, list[float]] = {"bare": [], "validate": []}
    for _ in range(repeats):
        for key, fn in (("bare", bare), ("validate", validate)):
            started = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - started)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "files": len(files),
        "bare_us": med["bare"] / len(files) * 1e6,
        "validate_us": med["validate"] / len(files) * 1e6,
        "ratio": med["validate"] / med["bare"],
    }


def decode_reference(files: int = 300) -> dict | None:
    """The same ratio on real photos (hymenoptera, about 500x375 JPEGs), where decoding outweighs opening."""
    from bench.common import SHARED_DATASETS

    photos = sorted((SHARED_DATASETS / "hymenoptera").rglob("*.jpg"))[:files]
    if not photos:
        return None
    result = decode_ratio(photos) | {"dataset": "hymenoptera"}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "decode_reference.json").write_text(json.dumps(result, indent=1), encoding="utf-8")
    return result


# ---------------------------------------------------------------- one size


def measure_size(n: int, workers_compare: bool, decode_files: int) -> dict:
    started = time.perf_counter()
    classify_src, detect_src = generate_classify(n), generate_detect(n)
    print(f"N={n}: data ready ({time.perf_counter() - started:.0f} s, not timed as a stage)", flush=True)
    project = prepare_project(n)
    logs = project / "bench_logs"
    logs.mkdir()
    result: dict[str, Any] = {"n": n, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    result["load_before"] = os.getloadavg()[0]

    variants = (("classify", classify_src, CLASSIFY_STAGES), ("detect", detect_src, DETECT_STAGES))
    for task, source, stages in variants:
        print(f"  {task} (2 workers):", flush=True)
        params = scale_params(source, task, workers=2, prefix=f"run_{task}")
        name = write_params(project, f"params_{task}.yaml", params)
        result[task] = [asdict(run_stage(project, params, name, s, logs)) for s in stages]
        if task == "classify":
            result["params_classify"] = {k: params[k] for k in ("train", "label_issues", "evaluate")}

    if workers_compare:
        print("  classify ingest + validate (1 worker):", flush=True)
        params = scale_params(classify_src, "classify", workers=1, prefix="run_w1")
        name = write_params(project, "params_w1.yaml", params)
        result["one_worker"] = [
            asdict(run_stage(project, params, name, s, logs)) for s in ("ingest", "validate")
        ]

    files = sorted(classify_src.rglob("*.jpg"))
    step = max(1, len(files) // decode_files)
    result["decode"] = decode_ratio(files[::step][:decode_files])
    print(f"  decode: {result['decode']}", flush=True)
    result["load_after"] = os.getloadavg()[0]
    result["cpu_count"] = os.cpu_count()
    result["ingest_workers_param"] = _has_field("ingest", "workers")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"scale_{n}.json").write_text(json.dumps(result, indent=1), encoding="utf-8")
    return result


# ---------------------------------------------------------------- rendering


def load_results() -> list[dict]:
    return sorted(
        (json.loads(p.read_text(encoding="utf-8")) for p in RESULTS.glob("scale_*.json")),
        key=lambda r: r["n"],
    )


def _by_stage(results: list[dict], task: str) -> dict[str, list[tuple[int, dict]]]:
    table: dict[str, list[tuple[int, dict]]] = {}
    for r in results:
        for run in r.get(task, []):
            table.setdefault(run["stage"], []).append((r["n"], run))
    return table


def _exponents(runs: list[tuple[int, dict]]) -> tuple[float | None, float | None]:
    sizes = [n for n, _ in runs]
    times = [run["wall_s"] for _, run in runs]
    if len(set(sizes)) < 2:
        return None, None
    return fit_exponent(sizes, times), fit_exponent(sizes[-2:], times[-2:])


def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def render(results: list[dict]) -> str:
    largest = max(r["n"] for r in results)
    lines = []
    verdicts = []
    for task in ("classify", "detect"):
        by_stage = _by_stage(results, task)
        rows = []
        for stage, runs in by_stage.items():
            k_all, k_top = _exponents(runs)
            for n, run in runs:
                rows.append(
                    [
                        stage,
                        n,
                        f"{run['wall_s']:.1f}",
                        f"{n / run['wall_s']:.0f}",
                        f"{run['max_rss_mb']:.0f}",
                        f"{run['tree_rss_mb']:.0f}",
                        f"{run['out_mb']:.1f}",
                        f"{run['cache_mb']:.1f}",
                        _fmt(k_all) if n == runs[-1][0] else "",
                        _fmt(k_top) if n == runs[-1][0] else "",
                    ]
                )
            top_rss = (
                max(run["max_rss_mb"] for n, run in runs if n == largest) if runs[-1][0] == largest else None
            )
            if top_rss is not None and top_rss > TARGET_RSS_MB:
                verdicts.append(f"{task} {stage}: {top_rss:.0f} MB peak RSS at {largest} (> 2 GB)")
            worst = max(k for k in (k_all, k_top) if k is not None) if k_all is not None else None
            if worst is not None and worst > TARGET_EXPONENT:
                verdicts.append(f"{task} {stage}: exponent {worst:.2f} (> {TARGET_EXPONENT})")
        header = [
            "stage",
            "N",
            "wall s",
            "img/s",
            "peak RSS MB (largest process)",
            "peak RSS MB (process tree)",
            "outputs MB",
            "cache +MB",
            "exponent (all sizes)",
            "exponent (two largest)",
        ]
        lines += [f"**{task}**", "", markdown_table(header, rows), ""]

    totals = []
    for r in results:
        row: list[object] = [r["n"]]
        for task in ("classify", "detect"):
            total = sum(run["wall_s"] for run in r.get(task, []))
            row += [f"{total:.0f}", f"{r['n'] / total:.0f}" if total else "-"]
        row.append(f"{r.get('load_before', 0):.1f} / {r.get('load_after', 0):.1f}")
        totals.append(row)
    k_total = None
    if len(totals) > 1:
        k_total = fit_exponent(
            [r["n"] for r in results], [sum(run["wall_s"] for run in r["classify"]) for r in results]
        )
    lines += [
        "**Whole pipeline** (sum of the stages; load average before / after the size's run)",
        "",
        markdown_table(
            [
                "N",
                "classify s",
                "classify img/s",
                "detect s (to the YOLO export)",
                "detect img/s",
                "load avg",
            ],
            totals,
        ),
        "",
        f"Classification pipeline exponent over all sizes: {_fmt(k_total)}.",
        "",
    ]

    decode_rows, worker_rows = [], []
    for r in results:
        d = r["decode"]
        decode_rows.append(
            [r["n"], d["files"], f"{d['bare_us']:.0f}", f"{d['validate_us']:.0f}", f"{d['ratio']:.2f}"]
        )
        if r.get("one_worker"):
            one = {run["stage"]: run["wall_s"] for run in r["one_worker"]}
            two = {run["stage"]: run["wall_s"] for run in r["classify"]}
            t1, t2 = one["ingest"] + one["validate"], two["ingest"] + two["validate"]
            eff = parallel_efficiency(t1, t2)
            worker_rows.append(
                [
                    r["n"],
                    f"{one['ingest']:.1f} / {two['ingest']:.1f}",
                    f"{one['validate']:.1f} / {two['validate']:.1f}",
                    f"{r['n'] / t1:.0f}",
                    f"{r['n'] / t2:.0f}",
                    f"{t1 / t2:.2f}",
                    f"{eff:.2f}",
                    f"{amdahl_speedup(eff, 2, 16):.1f}",
                ]
            )
    top = next(r for r in results if r["n"] == largest)
    if top["decode"]["ratio"] > TARGET_DECODE_RATIO:
        verdicts.append(
            f"decode ratio {top['decode']['ratio']:.2f} on the 64 px images at {largest} "
            f"(> {TARGET_DECODE_RATIO})"
        )
    reference = RESULTS / "decode_reference.json"
    if reference.is_file():
        d = json.loads(reference.read_text(encoding="utf-8"))
        decode_rows.append(
            [
                f"{d['dataset']} photos (reference)",
                d["files"],
                f"{d['bare_us']:.0f}",
                f"{d['validate_us']:.0f}",
                f"{d['ratio']:.2f}",
            ]
        )
    lines += [
        "**validate's decode against bare PIL** (same files, same process, interleaved, medians of 3; "
        "validate's is `inspect_image`: header read and pixel-limit check, then a second open, full "
        "decode, EXIF orientation and RGB conversion)",
        "",
        markdown_table(["N", "files", "bare PIL µs/img", "validate µs/img", "ratio"], decode_rows),
        "",
    ]
    if top.get("one_worker"):
        one = sum(run["wall_s"] for run in top["one_worker"])
        two = sum(run["wall_s"] for run in top["classify"] if run["stage"] in ("ingest", "validate"))
        if one / two < TARGET_TWO_WORKER_SPEEDUP:
            verdicts.append(
                f"ingest + validate with 2 workers ran {one / two:.2f}x the speed of 1 at {largest} "
                f"(both cores used would be >= {TARGET_TWO_WORKER_SPEEDUP}x)"
            )
    if worker_rows:
        lines += [
            "**ingest + validate, 1 vs 2 worker processes** (classify set, cold caches)",
            "",
            markdown_table(
                [
                    "N",
                    "ingest s (1 / 2)",
                    "validate s (1 / 2)",
                    "img/s, 1",
                    "img/s, 2",
                    "speed-up",
                    "parallel efficiency",
                    "Amdahl speed-up on 16 cores",
                ],
                worker_rows,
            ),
            "",
        ]
    lines.append(
        "**Targets**: "
        + (
            "every target met at the largest size (" + str(largest) + ")."
            if not verdicts
            else "not met: " + "; ".join(verdicts) + "."
        )
    )
    return "\n".join(lines)


INTRO = """Measured by `bench/bench_scale.py` (`--sizes {sizes}`) on generated data: N distinct
64x64 JPEGs of drawn shapes (4 classes, random background, clutter, position, size and colours per
image seed), folder-per-class for classification and a COCO JSON with 1-3 boxes per image for
detection. Each stage ran as its own `uv run --frozen python -m stages.<name>` in a scratch copy
of the project under `/usr/bin/time -v`, with `validate.workers` = `split.near_duplicates.workers`
= 2 (and `ingest.workers` where that param exists). Classification: ingest, validate, split,
label_issues (`enabled: false`: only its fixed cost; the K-fold heads were left out to keep 50k
inside the time box), augment, a linear probe on efficientnet_lite0 at 32 px (the smallest
`train.image_size`; 3 epochs, `aug_views: 0`, batch 256: the forward pass is linear in N by
construction and dominated the time box), evaluate (`bootstrap: 200`) and report; export is
not run. Accuracy is not the point here (shapes at 32 px after 3 epochs of a linear probe).
Detection: ingest, validate, split and the YOLO export (`stages.dataprep.yolo_export`, as the
detector trainer calls it; it writes into `paths.cache/yolo_dataset`, not a DVC output, so its
disk is under "cache +MB", where a hardlinked image counts 0 and each label file one 4 KB
block); no detector was trained. "Outputs MB" is the allocated size of the
stage's `dvc.yaml` outputs (a hardlinked file counts 0), "cache +MB" what it added under
`paths.cache` (undeclared, content-keyed). "Peak RSS (largest process)" is GNU time's maximum
resident set size, the figure the 2 GB target is checked against; "process tree" sums every
process alive at once (`uv`, the stage and its pool workers), sampled every 0.25 s. The exponent
is the least-squares slope of log(wall time) on log(N): over all sizes it is pulled down by each
stage's fixed cost (imports, model load, great-expectations), so the slope between the two
largest sizes is the one that shows growth. The machine (2 cores, 23 GB) was shared with other
jobs while this ran: timings are pessimistic, and the load average is given per size.
Raw numbers: `bench/results/scale_<N>.json`."""


def write_doc(results: list[dict]) -> None:
    sizes = " ".join(str(r["n"]) for r in results)
    write_section(
        "Scale: 1k to 50k images (bench/bench_scale.py)", INTRO.format(sizes=sizes) + "\n\n" + render(results)
    )


# ---------------------------------------------------------------- worker pools, 1 vs 2


def pool_speedups(n: int, repeats: int = 3) -> list[list[object]]:
    """The three per-file pools in this process on ``n`` generated 64 px JPEGs (fresh caches each
    time), 1 and 2 workers alternating: median seconds and the speed-up, one row per pool."""
    import hashlib

    from stages.core.params import ValidateSection
    from stages.dataprep import file_facts, importing, integrity, near_duplicates
    from stages.dataprep.imaging import allowed_formats

    files = sorted(generate_classify(max(n, 1000)).rglob("*.jpg"))[:n]
    shas = [hashlib.sha256(f.read_bytes()).hexdigest() for f in files]
    formats = allowed_formats()

    def validate(workers: int, cache: Path) -> None:
        integrity.check_images(files, shas, ValidateSection(workers=workers), cache)

    def hashes(workers: int, cache: Path) -> None:
        near_duplicates.compute_hashes(files, shas, ("phash", "dhash"), cache, workers)

    def ingest(workers: int, cache: Path) -> None:
        list(file_facts.read_files(importing.read_file, files, formats, workers))

    rows: list[list[object]] = []
    for name, job in (
        ("ingest: header + sha256", ingest),
        ("validate: decode", validate),
        ("split: hashes", hashes),
    ):
        times: dict[int, list[float]] = {1: [], 2: []}
        for _ in range(repeats):
            for workers in (1, 2):
                with tempfile.TemporaryDirectory() as cache:
                    started = time.perf_counter()
                    job(workers, Path(cache))
                    times[workers].append(time.perf_counter() - started)
        one, two = statistics.median(times[1]), statistics.median(times[2])
        rows.append([name, f"{one:.2f}", f"{two:.2f}", f"{one / two:.2f}x"])
    return rows


# ---------------------------------------------------------------- DVC at scale


def _timed(cmd: list[str], cwd: Path, env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def dvc_at_scale(n: int, cache_types: Sequence[str]) -> dict:
    """``dvc add`` and ``dvc status`` (cold, then warm) on ``data/raw`` with n files, per cache.type."""
    source = generate_classify(n)
    dvc = [str(VENV / "bin" / "dvc")]
    env = os.environ | {"DVC_NO_ANALYTICS": "1"}
    out: dict[str, Any] = {"n": n, "cache_types": {}}
    for cache_type in cache_types:
        with tempfile.TemporaryDirectory(prefix="dvc_scale_", dir="/tmp") as tmp:
            repo = Path(tmp)
            subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
            subprocess.run([*dvc, "init", "-q"], cwd=repo, check=True, env=env)
            if cache_type != "default":
                subprocess.run([*dvc, "config", "cache.type", cache_type], cwd=repo, check=True, env=env)
            raw = repo / "data" / "raw"
            shutil.copytree(source, raw, ignore=shutil.ignore_patterns(".complete"))
            workspace_before = disk_mb([raw])
            entry: dict[str, Any] = {"add_s": _timed([*dvc, "add", "data/raw"], repo, env)}
            entry["status_s"] = _timed([*dvc, "status"], repo, env)
            entry["status_warm_s"] = _timed([*dvc, "status"], repo, env)
            (raw / CLASSES[0] / "extra.jpg").write_bytes((source / CLASSES[0] / "000000.jpg").read_bytes())
            entry["status_one_new_file_s"] = _timed([*dvc, "status"], repo, env)
            entry["cache_mb"] = _du(repo / ".dvc" / "cache")
            entry["workspace_mb"] = _du(raw)
            entry["total_mb"] = _du(repo / ".dvc" / "cache", raw)
            entry["workspace_mb_before_add"] = workspace_before
            entry["workspace_is_link"] = (raw / CLASSES[1] / "000001.jpg").is_symlink()
            entry["workspace_nlink"] = (raw / CLASSES[1] / "000001.jpg").stat().st_nlink
            # The mode bits, not os.access: root may write anything, users may not.
            mode = (raw / CLASSES[1] / "000001.jpg").stat().st_mode
            entry["workspace_writable"] = bool(mode & 0o222)
            entry["workspace_mode"] = oct(mode & 0o777)
            out["cache_types"][cache_type] = entry
            print(f"  cache.type {cache_type}: {entry}", flush=True)
    version = subprocess.run([*dvc, "--version"], capture_output=True, text=True, check=True, env=env)
    out["dvc_version"] = version.stdout.strip()
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"dvc_scale_{n}.json").write_text(json.dumps(out, indent=1), encoding="utf-8")
    return out


def _du(*paths: Path) -> float:
    """``du -sc`` in MB: a hardlinked file is counted once across all ``paths``."""
    done = subprocess.run(["du", "-sck", *map(str, paths)], capture_output=True, text=True, check=True)
    return int(done.stdout.strip().splitlines()[-1].split()[0]) / 1024


def render_dvc(result: dict) -> str:
    rows = [
        [
            cache_type,
            f"{e['add_s']:.1f}",
            f"{e['status_s']:.1f}",
            f"{e['status_warm_s']:.1f}",
            f"{e['status_one_new_file_s']:.1f}",
            f"{e['cache_mb']:.0f}",
            f"{e['workspace_mb']:.0f}",
            f"{e['total_mb']:.0f}",
            "symlink" if e["workspace_is_link"] else f"file, {e['workspace_nlink']} link(s)",
            f"{'yes' if e['workspace_writable'] else 'no'} ({e.get('workspace_mode', '?')})",
        ]
        for cache_type, e in result["cache_types"].items()
    ]
    header = [
        "cache.type",
        "dvc add s",
        "dvc status s",
        "again (warm) s",
        "after one new file s",
        "cache MB",
        "workspace MB",
        "both MB (du, links once)",
        "workspace file is",
        "writable (mode bits)",
    ]
    return (
        f"Measured by `bench/bench_scale.py --dvc {result['n']}` ({result['dvc_version']}): a scratch "
        f"git + DVC repository, `data/raw` = {result['n']:,} generated 64x64 JPEGs (about 2 KB each) in "
        "4 class folders, "
        "tracked as one directory output (`dvc add data/raw`), on this shared 2-core machine. `dvc status` "
        "is run right after the add, again, and once more after one file was added. "
        '"default" is DVC 3\'s `reflink,copy` (this filesystem has no reflinks, so: copy).\n\n'
        + markdown_table(header, rows)
    )


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 50000])
    parser.add_argument(
        "--no-workers-compare", action="store_true", help="skip ingest + validate with 1 worker"
    )
    parser.add_argument("--decode-files", type=int, default=2000, help="files in the decode-ratio sample")
    parser.add_argument(
        "--render", action="store_true", help="only render bench/results into docs/benchmarks.md"
    )
    parser.add_argument("--no-write", action="store_true", help="leave docs/benchmarks.md alone")
    parser.add_argument("--dvc", type=int, metavar="N", help="measure dvc add / status on N files instead")
    parser.add_argument(
        "--decode-reference", action="store_true", help="the decode ratio on real photos (hymenoptera)"
    )
    parser.add_argument(
        "--pools", type=int, metavar="N", help="1 vs 2 workers of each per-file pool on N files"
    )
    parser.add_argument("--cache-types", nargs="+", default=["default", "hardlink", "symlink"])
    parser.add_argument("--yolo-export", type=Path, metavar="PARAMS", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.yolo_export:
        yolo_export_main(args.yolo_export)
        return
    if args.decode_reference:
        print(decode_reference())
        return
    if args.pools:
        rows = pool_speedups(args.pools)
        table = markdown_table(["pool", "1 worker (s)", "2 workers (s)", "speed-up"], rows)
        print(table)
        if not args.no_write:
            intro = (
                f"`python -m bench.bench_scale --pools {args.pools}`: {args.pools:,} generated 64 px JPEGs, "
                "each pool called in-process with fresh caches, 1 and 2 workers alternating, medians of 3, "
                f"{os.cpu_count()} cores."
            )
            write_section("Scale: worker pools, 1 vs 2 processes", intro + "\n\n" + table)
        return
    if args.dvc:
        result = dvc_at_scale(args.dvc, args.cache_types)
        if not args.no_write:
            write_section(f"DVC at scale ({args.dvc:,} files)", render_dvc(result))
        return
    if not args.render:
        if not Path("/usr/bin/time").is_file():
            sys.exit("/usr/bin/time not found (GNU time): install it (apt-get install time).")
        for n in args.sizes:
            measure_size(n, not args.no_workers_compare, args.decode_files)
    results = load_results()
    if not results:
        sys.exit(f"no results in {RESULTS}; run some sizes first.")
    text = render(results)
    print(text)
    if not args.no_write:
        write_doc(results)
        print("wrote the section in docs/benchmarks.md")


if __name__ == "__main__":
    main()
