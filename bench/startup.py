"""Fixed start-up cost of each stage: ``python -m stages.<name> --help`` in a fresh process.

A stage's ``--help`` imports the entry module and everything it imports at top level, then
exits in argparse before reading params. For each of the seven stages it records the median
wall time and CPU time (user + system of the child, which load on a shared machine inflates
far less than wall time) of ``--repeats`` fresh processes, and which heavy libraries (torch,
great_expectations, albumentations, ultralytics) are in ``sys.modules`` after ``--help``.

Stages now import their heavy libraries inside ``run()``, so ``--help`` is not all a run pays
before working: the "run-path" figure adds the imports ``run()`` makes (``RUN_IMPORTS``, the
classification path; keep it in step with the entry points). ``import torch`` and ``import
great_expectations`` alone are the yardsticks. ``--compare DIR`` measures another checkout (a
worktree of an older commit) with the same interpreter, interleaved with this one.

``--bytecode as-is`` keeps the caller's environment (this sandbox sets PYTHONDONTWRITEBYTECODE=1
and the venv ships no .pyc, so every process compiles every module it imports);
``cached`` lets Python keep bytecode under a private ``PYTHONPYCACHEPREFIX`` (warmed by one
untimed run), which is what a normal install sees from its second run on.

    uv run --frozen python bench/startup.py [--repeats 5] [--compare /tmp/before] \
        [--bytecode as-is|cached|both] [--no-write]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import REPO_ROOT, markdown_table, write_section

STAGES = ("ingest", "validate", "split", "augment", "train", "evaluate", "report")
HEAVY = ("torch", "great_expectations", "albumentations", "ultralytics")
YARDSTICKS = ("torch", "great_expectations")
# What run() imports lazily on the classification path, on top of the entry module.
RUN_IMPORTS: dict[str, tuple[str, ...]] = {
    "ingest": (),
    "validate": ("great_expectations", "great_expectations.expectations"),
    "split": ("sklearn.model_selection",),
    "augment": ("albumentations", "matplotlib.pyplot"),
    "train": ("stages.engine.classifier", "timm"),
    "evaluate": (
        "stages.engine.device",
        "stages.engine.inference",
        "stages.models.checkpoints",
        "timm",
        "sklearn.metrics",
        "torchmetrics.functional.classification",
    ),
    "report": ("stages.reporting.page", "matplotlib.pyplot"),
}

# Runs the stage as ``-m stages.<name> --help`` would, then prints the heavy modules it loaded.
_PROBE = """
import contextlib, io, json, runpy, sys
sys.argv = ["stages.{stage}", "--help"]
with contextlib.redirect_stdout(io.StringIO()):
    try:
        runpy.run_module("stages.{stage}", run_name="__main__", alter_sys=True)
    except SystemExit:
        pass
print(json.dumps([name for name in {heavy!r} if name in sys.modules]))
"""


@dataclass(frozen=True)
class Timing:
    wall: float
    cpu: float


def timed_run(argv: list[str], cwd: Path, env: dict[str, str]) -> Timing:
    """Wall and CPU seconds of one fresh process from spawn to exit; fails loudly if it fails."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(argv, cwd=cwd, env=env, check=True, capture_output=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return Timing(wall, cpu)


def median(timings: list[Timing]) -> Timing:
    return Timing(statistics.median(t.wall for t in timings), statistics.median(t.cpu for t in timings))


def heavy_modules(stage: str, cwd: Path, env: dict[str, str]) -> list[str]:
    """The heavy libraries left in ``sys.modules`` after ``python -m stages.<stage> --help``."""
    code = _PROBE.format(stage=stage, heavy=HEAVY)
    argv = [sys.executable, "-c", code]
    out = subprocess.run(argv, cwd=cwd, env=env, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def commands(roots: dict[str, Path]) -> dict[tuple[str, str], tuple[list[str], Path]]:
    """Every timed command, keyed (checkout or 'import', stage or library)."""
    python = sys.executable
    out = {("import", lib): ([python, "-c", f"import {lib}"], REPO_ROOT) for lib in YARDSTICKS}
    for label, root in roots.items():
        for stage in STAGES:
            out[(label, stage)] = ([python, "-m", f"stages.{stage}", "--help"], root)
    for stage, modules in RUN_IMPORTS.items():
        code = "; ".join(f"import {m}" for m in (f"stages.{stage}", *modules))
        out[("run-path", stage)] = ([python, "-c", code], REPO_ROOT)
    return out


def environment(bytecode: str, cache: Path) -> dict[str, str]:
    env = dict(os.environ)
    if bytecode == "cached":
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(cache)
    return env


def measure(roots: dict[str, Path], repeats: int, env: dict[str, str]) -> dict[tuple[str, str], dict]:
    """Median timings per command, rounds interleaved so load hits all alike; heavy modules per stage."""
    todo = commands(roots)
    samples: dict[tuple[str, str], list[Timing]] = {key: [] for key in todo}
    for _ in range(repeats):
        for key, (argv, cwd) in todo.items():
            samples[key].append(timed_run(argv, cwd, env))
    results: dict[tuple[str, str], dict] = {key: {"time": median(v)} for key, v in samples.items()}
    for label, root in roots.items():
        for stage in STAGES:
            results[(label, stage)]["heavy"] = heavy_modules(stage, root, env)
    return results


def table(results: dict[tuple[str, str], dict], labels: list[str]) -> str:
    """One row per stage: per checkout wall / CPU seconds of --help and the heavy libraries loaded;
    then the run-path CPU seconds of the current checkout."""
    header = ["stage"]
    for label in labels:
        header += [f"{label}: `--help` wall s", f"{label}: CPU s", f"{label}: heavy libraries loaded"]
    header += ["run-path imports CPU s (current)"]
    rows = []
    for stage in STAGES:
        row: list[object] = [stage]
        for label in labels:
            cell = results[(label, stage)]
            row += [f"{cell['time'].wall:.2f}", f"{cell['time'].cpu:.2f}", ", ".join(cell["heavy"]) or "none"]
        row.append(f"{results[('run-path', stage)]['time'].cpu:.2f}")
        rows.append(row)
    return markdown_table(header, rows)


def yardsticks(results: dict[tuple[str, str], dict]) -> str:
    return "; ".join(
        f"`import {lib}` alone {results[('import', lib)]['time'].wall:.2f} s wall, "
        f"{results[('import', lib)]['time'].cpu:.2f} s CPU"
        for lib in YARDSTICKS
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--compare", type=Path, help="another checkout to measure, labelled 'before'")
    parser.add_argument("--bytecode", choices=("as-is", "cached", "both"), default="both")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = parser.parse_args()
    roots = {"before": args.compare.resolve()} if args.compare else {}
    roots["after"] = REPO_ROOT
    modes = ("as-is", "cached") if args.bytecode == "both" else (args.bytecode,)
    parts = []
    with tempfile.TemporaryDirectory(prefix="startup-pyc-") as cache:
        for mode in modes:
            env = environment(mode, Path(cache))
            if mode == "cached":  # one untimed round writes the bytecode
                measure(roots, 1, env)
            results = measure(roots, args.repeats, env)
            part = f"Bytecode {mode}: {yardsticks(results)}.\n\n{table(results, list(roots))}\n"
            print(part)
            parts.append(part)
    if not args.no_write:
        write_section("Start-up", _section(parts, args.repeats))


def _section(parts: list[str], repeats: int) -> str:
    intro = (
        f"Script: `bench/startup.py --repeats {repeats} --compare <worktree of 8d15462>` (before: the flat "
        "`stages/` package; after: this checkout). `--help` wall and CPU time of `python -m "
        f"stages.<name> --help` in a fresh process, median of {repeats} interleaved runs: the entry module "
        "and everything it imports at top level. CPU time (user + system) is the figure to read on "
        "this shared 2-core machine, where other jobs stretch wall time; on an idle machine wall time "
        'is close to it. "run-path imports" adds what `run()` imports lazily on the classification '
        'path (`RUN_IMPORTS` in the script): what a real run pays before working. "as-is": this '
        "sandbox sets PYTHONDONTWRITEBYTECODE=1 and the venv has no .pyc, so every process compiles "
        'what it imports; "cached": bytecode kept, as on a normal install from the second run on.\n\n'
    )
    return intro + "\n".join(parts)


if __name__ == "__main__":
    main()
