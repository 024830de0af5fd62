#!/usr/bin/env bash
# GPU check: run every CUDA code path of the project once, each step under a time limit.
#
#   bench/gpu_check.sh            on a GPU machine (steps below; sized for ~6 min on one H200, not yet measured)
#   bench/gpu_check.sh --dry-run  the same steps on the CPU with tiny settings on data/demo (CI)
#   bench/gpu_check.sh --install-only  only install the carried part of the pack (see Setup)
#
# Steps (one line each: name, ok/FAIL, seconds, key number):
#   setup                  find or install a Python with the project's dependencies (below)
#   environment            GPU, driver, torch / CUDA / cuDNN, and the torch uv.lock pins (warns on mismatch)
#   classify_linear_probe  ingest..evaluate on hymenoptera, train.device: cuda, linear_probe
#   classify_full          train + evaluate again with strategy full (AMP bf16, channels_last, 15 epochs)
#   loop_throughput        images/s of stages.engine.loop on the GPU vs the same loop on the CPU,
#                          and proof that the step ran in bf16 with channels_last activations
#   detector               raccoon_voc, 5 epochs at 640 px, AMP on, behind a dead proxy; fails on any
#                          download (log line or new model file) or when ultralytics' AMP check did
#                          not pass on the local checkpoint
#   onnx_cuda              python -m stages.export (INT8 off), then onnxruntime's CUDAExecutionProvider
#                          on the exported model against the CPU provider; "skipped: not available"
#                          only while stages/export.py does not exist (the one allowed skip, recorded
#                          in the JSON). The lock's onnxruntime is the CPU-only wheel: on the GPU this
#                          step fails until onnxruntime-gpu is installed there
# Results: $OUT/gpu_check.json, $OUT/gpu_check.md, $OUT/gpu_check.log (OUT defaults to bench/out/).
# The first failing step stops the run: exit 1 and "gpu_check: FAIL at step <name>: <why>" on stderr.
# Stages run in scratch copies under $GPU_CHECK_WORK (default: a new /tmp folder): the checkout is
# never written, except $OUT.
#
# Setup, in this order:
#   1. $GPU_CHECK_PYTHON, when set;
#   2. the checkout's .venv (uv sync --frozen), when it imports the dependencies;
#   3. a bare GPU machine without network: the machine's own python3 with its torch (the lock's
#      CUDA torch is gigabytes and cannot travel) plus the lock's versions of every other
#      dependency it lacks, as wheels built for its Python, installed with
#      pip --no-index --no-deps --target $GPU_CHECK_SITE (default /tmp/gpu_check_site, kept while
#      the machine stays warm) and put on PYTHONPATH. bench/gpu_check_pack.py makes them, on a CPU
#      checkout with network, into bench/gpu_pack/ (git-ignored), with the detector's start
#      checkpoint and the two datasets (../shared does not travel). The device tool sends at most
#      64 MiB per call and the pack is about 153 MiB (polars alone, which ultralytics needs, is
#      52 MiB), so the pack is cut into parts that each fit one call: install parts, installed by
#      `--install-only` calls made back to back (the machine stays warm 30 s after a call), then
#      the run part, which also holds the datasets and the checkpoint:
#          run(command="bench/gpu_check.sh --install-only", carry=["bench/gpu_pack/install1"])
#          run(command="bench/gpu_check.sh --install-only", carry=["bench/gpu_pack/install2"])
#          run(command="bench/gpu_check.sh", carry=["bench/gpu_pack/run"], timeout_s=600)
#      (the pack script prints the parts it made). If the machine went back between calls, the
#      site is gone and setup fails naming the missing module: start again from the first part.
#   Anything else: the setup step fails and says what is missing.
# Env: OUT, GPU_CHECK_PYTHON, GPU_CHECK_PACK (default bench/gpu_pack), GPU_CHECK_SITE,
#      GPU_CHECK_DATASETS, GPU_CHECK_WORK, GPU_CHECK_FAIL=<step> (makes that step fail: the test
#      of this path).
set -uo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DRY=0
INSTALL_ONLY=0
for arg in "$@"; do
    case "$arg" in
        --dry-run) DRY=1 ;;
        --install-only) INSTALL_ONLY=1 ;;
        -h | --help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "gpu_check: unknown argument '$arg' (only --dry-run, --install-only)" >&2; exit 2 ;;
    esac
done

OUT="${OUT:-$REPO/bench/out}"
mkdir -p "$OUT" && OUT="$(cd "$OUT" && pwd)"
rm -f "$OUT/gpu_check.json" "$OUT/gpu_check.md" "$OUT/gpu_check.log"
WORK="${GPU_CHECK_WORK:-$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")}"
mkdir -p "$WORK" && WORK="$(cd "$WORK" && pwd)"
PACK="${GPU_CHECK_PACK:-$REPO/bench/gpu_pack}"
SITE="${GPU_CHECK_SITE:-/tmp/gpu_check_site}"
shopt -s nullglob
WHEELS=("$PACK"/wheels/*.whl "$PACK"/*/wheels/*.whl)
WEIGHTS=("$PACK"/weights/best.pt "$PACK"/*/weights/best.pt)
SETUP_LIMIT=$([ "$DRY" = 1 ] && echo 120 || echo 180)
# What every step imports somewhere; a Python that lacks one cannot run the check.
SMOKE="import stages, torch, torchvision, timm, ultralytics, albumentations, great_expectations, dvclive, pydantic, imagehash, pycocotools, onnxruntime, yaml"

DATASETS="${GPU_CHECK_DATASETS:-}"
if [ -z "$DATASETS" ]; then
    for candidate in "$PACK/datasets" "$PACK"/*/datasets "$REPO/shared/datasets" "$REPO/../shared/datasets"; do
        if [ -d "$candidate/hymenoptera" ]; then DATASETS="$(cd "$candidate" && pwd)"; break; fi
    done
fi

setup_row() {  # status seconds key-or-error  -> $WORK/setup.json (a row of the results)
    STATUS="$1" SECONDS_="$2" TEXT="$3" LIMIT="$SETUP_LIMIT" python3 - "$WORK/setup.json" <<'EOF'
import json, os, sys
row = {"step": "setup", "status": os.environ["STATUS"], "limit_s": int(os.environ["LIMIT"]),
       "seconds": float(os.environ["SECONDS_"]), "key" if os.environ["STATUS"] == "ok" else "error": os.environ["TEXT"]}
open(sys.argv[1], "w").write(json.dumps(row) + "\n")
EOF
}

fail_setup() {
    local elapsed=$(($(date +%s) - START))
    setup_row FAIL "$elapsed" "$1"
    MODE=$([ "$DRY" = 1 ] && echo dry-run || echo gpu) python3 - "$WORK/setup.json" "$OUT" <<'EOF'
import json, os, sys, time
row = json.loads(open(sys.argv[1]).read())
out = sys.argv[2]
json.dump({"mode": os.environ["MODE"], "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
           "status": "FAIL at setup", "steps": [row]}, open(f"{out}/gpu_check.json", "w"), indent=2)
open(f"{out}/gpu_check.md", "w").write(
    "# GPU check\n\n| step | result | seconds | limit (s) | key number |\n|---|---|---|---|---|\n"
    f"| setup | FAIL | {row['seconds']} | {row['limit_s']} | {row['error']} |\n")
EOF
    printf '%-22s %-7s %7s s  %s\n' setup FAIL "$elapsed" "$1"
    echo "gpu_check: FAIL at step setup: $1" >&2
    exit 1
}

imports_ok() {  # $1 can import every dependency; else IMPORT_ERROR holds the last line of why not
    local output
    output="$(cd "$REPO" && timeout "$SETUP_LIMIT" "$1" -c "$SMOKE" 2>&1)" && return 0
    echo "$output" >>"$OUT/gpu_check.log"
    IMPORT_ERROR="$(echo "$output" | tail -1)"
    return 1
}

START=$(date +%s)
echo "===== setup =====" >>"$OUT/gpu_check.log"
[ "${GPU_CHECK_FAIL:-}" = setup ] && fail_setup "forced by GPU_CHECK_FAIL"
command -v python3 >/dev/null || fail_setup "no python3 on PATH"
install_wheels() {  # the carried wheels into $SITE (no index, no dependency resolution: the pack is complete)
    python3 -c "import torch" 2>>"$OUT/gpu_check.log" || fail_setup "python3 has no torch and the pack carries none (it relies on the machine's torch)"
    timeout "$SETUP_LIMIT" python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$SITE" "${WHEELS[@]}" >>"$OUT/gpu_check.log" 2>&1 ||
        fail_setup "pip could not install the ${#WHEELS[@]} carried wheels into $SITE (see gpu_check.log)"
}
site_count() { find "$SITE" -maxdepth 1 -name '*.dist-info' 2>/dev/null | wc -l; }

if [ "$INSTALL_ONLY" = 1 ]; then
    [ "${#WHEELS[@]}" -gt 0 ] || fail_setup "--install-only, but no wheels under $PACK (carry a part of the pack)"
    install_wheels
    echo "installed ${#WHEELS[@]} wheels into $SITE ($(site_count) distributions there now)"
    exit 0
fi
PY=""
HOW=""
if [ -n "${GPU_CHECK_PYTHON:-}" ]; then
    imports_ok "$GPU_CHECK_PYTHON" || fail_setup "GPU_CHECK_PYTHON=$GPU_CHECK_PYTHON cannot import the dependencies: $IMPORT_ERROR"
    PY="$GPU_CHECK_PYTHON" HOW="GPU_CHECK_PYTHON"
elif [ -x "$REPO/.venv/bin/python" ] && imports_ok "$REPO/.venv/bin/python"; then
    PY="$REPO/.venv/bin/python" HOW=".venv (uv sync --frozen)"
elif [ "${#WHEELS[@]}" -gt 0 ] || [ -d "$SITE" ]; then
    [ "${#WHEELS[@]}" -gt 0 ] && install_wheels
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
    imports_ok python3 || fail_setup "python3 + $SITE cannot import the dependencies ($IMPORT_ERROR): carry every install part of the pack first"
    PY="$(command -v python3)"
    HOW="python3 + ${#WHEELS[@]} wheels carried now, $(site_count) distributions in $SITE"
else
    fail_setup "no Python with the dependencies: set GPU_CHECK_PYTHON, run uv sync --frozen, or carry a pack made by bench/gpu_check_pack.py"
fi
ELAPSED=$(($(date +%s) - START))
KEY="$("$PY" -c 'import platform, torch; print(f"Python {platform.python_version()}, torch {torch.__version__}")') via $HOW"
setup_row ok "$ELAPSED" "$KEY"
printf '%-22s %-7s %7s s  %s\n' setup ok "$ELAPSED" "$KEY"

ARGS=(--out "$OUT" --work "$WORK" --setup "$WORK/setup.json")
[ "$DRY" = 1 ] && ARGS+=(--dry-run)
[ -n "$DATASETS" ] && ARGS+=(--datasets "$DATASETS")
[ "${#WEIGHTS[@]}" -gt 0 ] && ARGS+=(--detector-weights "${WEIGHTS[0]}")
cd "$REPO" && exec "$PY" bench/gpu_check_run.py "${ARGS[@]}"
