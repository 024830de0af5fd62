"""Data-parallel classifier training (``train.distributed``): torchrun, the process group, collectives.

``python -m stages.train`` with ``nproc > 1`` starts itself again under ``torch.distributed.run``
(``--standalone``: one machine), so ``dvc repro`` stays the one command; inside a torchrun child
(``LOCAL_RANK`` and ``WORLD_SIZE`` set) it trains as one rank. Every rank sees a disjoint shard
of the same seeded epoch order (``EpochSampler``) and ``batch_size / nproc`` images of each global
batch; DDP averages the gradients, so one step moves the weights as one process with the whole
batch would (BatchNorm statistics excepted: each rank normalises its own shard). Rank 0 writes
everything.

Without a process group (one process) every helper here is the identity, so the loop has one path.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import uuid
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from stages.core.errors import UserError

log = logging.getLogger("stages.train")

RESULT_ENV = "CV_FINETUNE_DDP_RESULT"  # where rank 0 writes its result for the launching process
# Ranks wait for rank 0 at barriers while it fills the feature cache or writes the model: a dead
# rank is caught by torchrun (it stops the group), so the wait itself may be long.
GROUP_TIMEOUT = timedelta(hours=6)


def in_torchrun() -> bool:
    """Whether this process is a rank that torchrun started."""
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    """Rank 0 (or the only process): the one that writes checkpoints, logs, metrics and models."""
    return rank() == 0


def backend_for(choice: str, device: torch.device) -> str:
    """``auto``: nccl on CUDA, gloo on CPU."""
    if choice == "auto":
        return "nccl" if device.type == "cuda" else "gloo"
    if choice == "nccl" and device.type != "cuda":
        raise UserError("train.distributed.backend is nccl but train.device is the CPU; use auto or gloo.")
    return choice


def rank_device(device: torch.device) -> torch.device:
    """One GPU per rank (``cuda:LOCAL_RANK``); the CPU is shared."""
    if device.type != "cuda" or not in_torchrun():
        return device
    return torch.device("cuda", int(os.environ["LOCAL_RANK"]))


@contextmanager
def process_group(backend: str, device: torch.device) -> Iterator[None]:
    """Join torchrun's group for the block; at the end every rank waits for rank 0's writes."""
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend, timeout=GROUP_TIMEOUT)
    quiet = logging.getLogger("stages")
    level = quiet.level
    if not is_main():  # one voice: rank 0 logs the epochs, the others only warnings
        quiet.setLevel(logging.WARNING)
    try:
        yield
        barrier()
    finally:
        quiet.setLevel(level)
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_sum(values: Sequence[float]) -> list[float]:
    """Element-wise sums over ranks (float64); the values themselves in one process."""
    if not dist.is_initialized():
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64)
    if dist.get_backend() == "nccl":
        tensor = tensor.cuda()
    dist.all_reduce(tensor)
    return tensor.cpu().tolist()


def agree(flag: bool) -> bool:
    """Rank 0's ``flag`` on every rank (a stop decision must be the same everywhere, or ranks hang)."""
    if not dist.is_initialized():
        return flag
    box: list[Any] = [flag]
    dist.broadcast_object_list(box, src=0)
    return bool(box[0])


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` under DDP when there is a group (built again whenever the trainable set changes:
    DDP's reducer covers the parameters that require grad when it is made); else ``model``."""
    if not dist.is_initialized():
        return model
    # Depthwise kernels ([C, 1, k, k]) have two valid stride layouts; the copy DDP then makes is
    # correct, only slower, and the warning would repeat on every rank.
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def single_process_reason(strategy: str, reports_epochs: bool) -> str | None:
    """Why a run with ``nproc > 1`` still trains in this one process, or None."""
    if strategy == "linear_probe":
        return "linear_probe trains a linear head on cached features, which one process does best"
    if reports_epochs:
        return "the caller (tune) needs every epoch reported in this process"
    return None


def torchrun_command(nproc: int, max_restarts: int, params_file: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        f"--max_restarts={max_restarts}",
        "-m",
        "stages.train",
        "--params",
        str(params_file),
    ]


def launch(raw_params: dict, nproc: int, max_restarts: int, device: torch.device, scratch: Path) -> dict:
    """Run the train stage as ``nproc`` torchrun ranks on ``raw_params``; rank 0's result fields.

    The params go to a file under ``scratch`` (the caller's may have overrides no file holds), and
    the ranks inherit this process's environment, the checkout lock's holder list included.
    """
    if device.type == "cuda" and nproc > torch.cuda.device_count():
        raise UserError(
            f"train.distributed.nproc is {nproc} but {torch.cuda.device_count()} GPU(s) are visible; "
            "lower nproc in params.yaml."
        )
    import yaml

    scratch.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex[:12]
    params_file = scratch / f"params-{token}.yaml"
    result_file = scratch / f"result-{token}.json"
    params_file.write_text(yaml.safe_dump(raw_params, sort_keys=False), encoding="utf-8")
    env = dict(os.environ, **{RESULT_ENV: str(result_file)})
    root = str(Path(__file__).resolve().parents[2])  # the checkout whose stages package runs here
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    if "OMP_NUM_THREADS" not in env:  # torchrun would give each rank 1 thread: share the cores instead
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // nproc))
    command = torchrun_command(nproc, max_restarts, params_file)
    log.info("train: %d processes under torchrun: %s", nproc, " ".join(command[1:]))
    try:
        code = subprocess.run(command, env=env, check=False).returncode
        if code != 0:
            raise UserError(
                f"the {nproc} training processes under torchrun failed (exit {code}; their output is "
                "above); run again to resume from the last checkpoint."
            )
        return json.loads(result_file.read_text(encoding="utf-8"))
    finally:
        params_file.unlink(missing_ok=True)
        result_file.unlink(missing_ok=True)


def report_result(fields: dict) -> None:
    """Rank 0 hands its result to the launching process (a file named in ``RESULT_ENV``)."""
    target = os.environ.get(RESULT_ENV)
    if target and is_main():
        Path(target).write_text(json.dumps(fields, default=str), encoding="utf-8")
