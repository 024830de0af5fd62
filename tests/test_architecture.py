"""The import rules of docs/architecture.md and the dvc.yaml deps that follow from them, checked on the AST.

Each rule is a checker function over a project root, run on the real tree and, so that a
checker that silently passes everything is caught too, on a small fake tree with a planted
violation. The deps test uses the same static import closure as the code digests
(``stages.core.codebase``): a stage whose code deps miss a file it imports could keep a stale
output while ``dvc status`` says it is up to date.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from stages.core.codebase import PROJECT_PACKAGES, PROJECT_ROOT, import_closure

ENTRY_POINTS = (
    "ingest",
    "validate",
    "split",
    "label_issues",
    "augment",
    "train",
    "box_issues",
    "evaluate",
    "export",
    "report",
)
CORE_FORBIDDEN = ("torch", "torchvision", "timm", "ultralytics", "albumentations", "great_expectations")
ULTRALYTICS_HOME = "stages/engine/yolo"
DVC_FILES = ("dvc.yaml", "tune/dvc.yaml")
STAGE_COMMAND = re.compile(r"python -m ([\w.]+)")
TEMPLATE = re.compile(r"\$\{\s*([\w.-]+)\s*\}")


# --- reading the source -----------------------------------------------------------------------


def python_files(root: Path, *packages: str) -> list[Path]:
    return sorted(f for package in packages for f in (root / package).rglob("*.py"))


def relative(file: Path, root: Path) -> str:
    return file.relative_to(root).as_posix()


def imported_names(file: Path) -> set[str]:
    """Every module a file imports, anywhere (lazy, TYPE_CHECKING, ``import_module("x")``)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"), filename=str(file))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Call) and _is_import_call(node.func) and node.args:
            first = node.args[0]
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                found.add(first.value)
    return found


def _is_import_call(func: ast.expr) -> bool:
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
    return name in ("import_module", "__import__")


def imports_of(file: Path, modules: set[str]) -> set[str]:
    """Which of ``modules`` (or their submodules) a file imports."""
    return {m for name in imported_names(file) for m in modules if name == m or name.startswith(m + ".")}


# --- the rules ----------------------------------------------------------------------------------


def entry_modules(root: Path) -> dict[str, Path]:
    return {
        f"stages.{n}": root / "stages" / f"{n}.py"
        for n in ENTRY_POINTS
        if (root / f"stages/{n}.py").is_file()
    }


def entry_point_violations(root: Path) -> list[str]:
    """An entry point importing another entry point (they share code through the library only)."""
    entries = entry_modules(root)
    return [
        f"{relative(file, root)} imports {other}"
        for module, file in entries.items()
        for other in sorted(imports_of(file, set(entries) - {module}))
    ]


def library_violations(root: Path) -> list[str]:
    """A library module (anything under stages/ but the entry points) importing an entry point."""
    entries = entry_modules(root)
    library = [f for f in python_files(root, "stages") if f not in entries.values()]
    return [f"{relative(f, root)} imports {m}" for f in library for m in sorted(imports_of(f, set(entries)))]


def forbidden_import_violations(files: list[Path], libraries: tuple[str, ...], root: Path) -> list[str]:
    return [f"{relative(f, root)} imports {m}" for f in files for m in sorted(imports_of(f, set(libraries)))]


def core_violations(root: Path) -> list[str]:
    return forbidden_import_violations(python_files(root, "stages/core"), CORE_FORBIDDEN, root)


def ultralytics_violations(root: Path) -> list[str]:
    """ultralytics is AGPL: only stages/engine/yolo may import it."""
    home = root / ULTRALYTICS_HOME
    outside = [f for f in python_files(root, *PROJECT_PACKAGES) if home not in f.parents]
    return forbidden_import_violations(outside, ("ultralytics",), root)


def relative_import_violations(root: Path) -> list[str]:
    """The static import closure only follows absolute imports, so a relative one would escape it."""
    return [
        f"{relative(f, root)}:{node.lineno} relative import"
        for f in python_files(root, *PROJECT_PACKAGES)
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8")))
        if isinstance(node, ast.ImportFrom) and node.level > 0
    ]


# --- dvc.yaml ---------------------------------------------------------------------------------


def _lookup(context: dict[str, Any], key: str) -> Any:
    value: Any = context
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            raise KeyError(key)
        value = value[part]
    return value


def template_context(dvc_file: Path) -> dict[str, Any]:
    """What DVC interpolates ``${...}`` from: params.yaml beside the file, then its ``vars`` files."""
    context: dict[str, Any] = {}
    sources = [dvc_file.parent / "params.yaml"]
    sources += [
        dvc_file.parent / v
        for v in yaml.safe_load(dvc_file.read_text(encoding="utf-8")).get("vars", [])
        if isinstance(v, str)
    ]
    for source in sources:
        if source.is_file():
            context |= yaml.safe_load(source.read_text(encoding="utf-8")) or {}
    return context


def resolve(text: str, context: dict[str, Any]) -> str:
    return TEMPLATE.sub(lambda m: str(_lookup(context, m.group(1))), text)


def stage_deps(dvc_file: Path) -> dict[str, tuple[str, list[Path]]]:
    """Stage name -> (its cmd, its deps as resolved absolute paths, relative to the stage's wdir)."""
    document = yaml.safe_load(dvc_file.read_text(encoding="utf-8"))
    context = template_context(dvc_file)
    stages = {}
    for name, stage in document.get("stages", {}).items():
        wdir = (dvc_file.parent / stage.get("wdir", ".")).resolve()
        deps = [next(iter(d)) if isinstance(d, dict) else d for d in stage.get("deps", [])]
        stages[name] = (
            resolve(stage["cmd"], context),
            [(wdir / resolve(d, context)).resolve() for d in deps],
        )
    return stages


def covered(file: Path, deps: list[Path]) -> bool:
    """A dep covers a file when it is the file or a folder above it."""
    return any(dep == file or dep in file.parents for dep in deps)


def is_code(path: Path, root: Path) -> bool:
    return path.is_relative_to(root) and path.relative_to(root).parts[0] in PROJECT_PACKAGES


def closure_violations(dvc_file: Path, root: Path) -> list[str]:
    """Files a stage's command imports that its deps do not cover, named with the stage."""
    problems = []
    for name, (cmd, deps) in stage_deps(dvc_file).items():
        match = STAGE_COMMAND.search(cmd)
        if match is None:
            problems.append(f"{relative(dvc_file, root)}:{name}: cmd {cmd!r} is not `python -m <module>`")
            continue
        for file in sorted(import_closure(match.group(1), root)):
            if not covered(file, deps):
                where = f"{relative(dvc_file, root)}:{name}"
                problems.append(f"{where} imports {relative(file, root)}, which no dep covers")
    return problems


def code_dep_violations(dvc_file: Path, root: Path) -> list[str]:
    """Code deps must exist, be an entry file or a library folder, and be imported by the stage."""
    problems = []
    for name, (cmd, deps) in stage_deps(dvc_file).items():
        match = STAGE_COMMAND.search(cmd)
        closure = import_closure(match.group(1), root) if match else frozenset()
        for dep in (d for d in deps if is_code(d, root)):
            where = f"{relative(dvc_file, root)}:{name} dep {relative(dep, root)}"
            depth = len(dep.relative_to(root).parts)
            if not dep.exists():
                problems.append(f"{where} does not exist")
            elif depth < 2:
                problems.append(f"{where} is the whole package; depend on the library folders it imports")
            elif depth > 2:
                problems.append(f"{where} is part of a library folder; depend on stages/<domain> instead")
            elif not any(covered(f, [dep]) for f in closure):
                problems.append(f"{where} is not imported by the stage (a needless re-run trigger)")
    return problems


def template_violations(dvc_file: Path, root: Path) -> list[str]:
    """Custom plot templates must exist (dvc plots reads them from the repository)."""
    document = yaml.safe_load(dvc_file.read_text(encoding="utf-8"))
    templates = [
        props["template"]
        for entry in document.get("plots", [])
        if isinstance(entry, dict)
        for props in entry.values()
        if isinstance(props, dict) and "/" in str(props.get("template", ""))
    ]
    return [
        f"{relative(dvc_file, root)}: plot template {t} is missing"
        for t in templates
        if not (root / t).is_file()
    ]


# --- on the real tree -------------------------------------------------------------------------


def test_entry_points_never_import_each_other() -> None:
    assert len(entry_modules(PROJECT_ROOT)) == len(ENTRY_POINTS)
    assert entry_point_violations(PROJECT_ROOT) == []


def test_the_library_never_imports_an_entry_point() -> None:
    assert library_violations(PROJECT_ROOT) == []


def test_core_imports_no_heavy_library() -> None:
    assert python_files(PROJECT_ROOT, "stages/core")
    assert core_violations(PROJECT_ROOT) == []


def test_only_engine_yolo_imports_ultralytics() -> None:
    assert forbidden_import_violations(
        python_files(PROJECT_ROOT, ULTRALYTICS_HOME), ("ultralytics",), PROJECT_ROOT
    )
    assert ultralytics_violations(PROJECT_ROOT) == []


def test_no_relative_imports_escape_the_closure() -> None:
    assert relative_import_violations(PROJECT_ROOT) == []


@pytest.mark.parametrize("dvc_file", DVC_FILES)
def test_every_stage_depends_on_all_the_code_it_imports(dvc_file: str) -> None:
    assert stage_deps(PROJECT_ROOT / dvc_file)
    assert closure_violations(PROJECT_ROOT / dvc_file, PROJECT_ROOT) == []


@pytest.mark.parametrize("dvc_file", DVC_FILES)
def test_code_deps_exist_are_folders_and_are_used(dvc_file: str) -> None:
    assert code_dep_violations(PROJECT_ROOT / dvc_file, PROJECT_ROOT) == []
    assert template_violations(PROJECT_ROOT / dvc_file, PROJECT_ROOT) == []


def test_the_seven_stages_are_the_entry_points() -> None:
    stages = stage_deps(PROJECT_ROOT / "dvc.yaml")
    modules = {m.group(1) for cmd, _ in stages.values() if (m := STAGE_COMMAND.search(cmd))}
    assert modules == set(entry_modules(PROJECT_ROOT))


# --- the checkers themselves, on a fake tree with planted violations ----------------------------


def _write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text, encoding="utf-8")
    return root


CLEAN_TREE = {
    "stages/__init__.py": "",
    "stages/ingest.py": "from stages.core import layout\nfrom stages.tools.reader import read\n",
    "stages/train.py": "def run():\n    from stages.tools import reader\n",
    "stages/core/__init__.py": "",
    "stages/core/layout.py": "import json\n",
    "stages/tools/__init__.py": "",
    "stages/tools/reader.py": "def read():\n    import torch\n",
    "stages/engine/yolo/__init__.py": "",
    "stages/engine/__init__.py": "",
    "stages/engine/yolo/trainer.py": "import ultralytics\n",
    "pipelines/__init__.py": "",
    "params.yaml": "paths: {reports: out}\ndata: {source: raw}\n",
}
CLEAN_DVC = """
stages:
  ingest:
    cmd: python -m stages.ingest
    deps:
      - ${data.source}
      - stages/__init__.py
      - stages/ingest.py
      - stages/core
      - stages/tools
    outs:
      - ${paths.reports}/x
"""


@pytest.fixture
def fake(tmp_path: Path) -> Path:
    root = _write(tmp_path, CLEAN_TREE | {"dvc.yaml": CLEAN_DVC})
    (root / "raw").mkdir()
    return root


def test_a_clean_fake_tree_passes_every_checker(fake: Path) -> None:
    assert entry_point_violations(fake) == library_violations(fake) == core_violations(fake) == []
    assert ultralytics_violations(fake) == relative_import_violations(fake) == []
    assert closure_violations(fake / "dvc.yaml", fake) == code_dep_violations(fake / "dvc.yaml", fake) == []


def test_an_entry_point_importing_another_is_caught_even_lazily(fake: Path) -> None:
    _write(fake, {"stages/ingest.py": "def f():\n    from stages import train\n"})
    assert entry_point_violations(fake) == ["stages/ingest.py imports stages.train"]


def test_the_library_importing_an_entry_point_is_caught(fake: Path) -> None:
    _write(fake, {"stages/tools/reader.py": "import stages.train as t\n"})
    assert library_violations(fake) == ["stages/tools/reader.py imports stages.train"]


@pytest.mark.parametrize(
    "source",
    [
        "import torch.nn\n",
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from timm import models\n",
        "def f():\n    import albumentations as A\n",
        "from great_expectations import core\n",
    ],
)
def test_a_heavy_import_in_core_is_caught_anywhere_in_the_file(fake: Path, source: str) -> None:
    _write(fake, {"stages/core/layout.py": source})
    assert len(core_violations(fake)) == 1


def test_ultralytics_outside_engine_yolo_is_caught(fake: Path) -> None:
    _write(fake, {"pipelines/gate.py": "import importlib\nimportlib.import_module('ultralytics.utils')\n"})
    assert ultralytics_violations(fake) == ["pipelines/gate.py imports ultralytics"]


def test_a_relative_import_is_caught(fake: Path) -> None:
    _write(fake, {"stages/tools/other.py": "from .reader import read\n"})
    assert relative_import_violations(fake) == ["stages/tools/other.py:1 relative import"]


def test_an_import_not_covered_by_the_deps_names_the_stage_and_the_file(fake: Path) -> None:
    _write(fake, {"stages/tools/reader.py": "def read():\n    from stages.extra.more import thing\n"})
    _write(fake, {"stages/extra/__init__.py": "", "stages/extra/more.py": "thing = 1\n"})
    assert closure_violations(fake / "dvc.yaml", fake) == [
        "dvc.yaml:ingest imports stages/extra/__init__.py, which no dep covers",
        "dvc.yaml:ingest imports stages/extra/more.py, which no dep covers",
    ]


def test_deps_resolve_templates_and_the_stage_wdir(fake: Path) -> None:
    _write(
        fake, {"tune/dvc.yaml": CLEAN_DVC.replace("cmd:", "wdir: ..\n    cmd:") + "vars: [../params.yaml]\n"}
    )
    ((cmd, deps),) = stage_deps(fake / "tune/dvc.yaml").values()
    assert cmd == "python -m stages.ingest" and deps[0] == (fake / "raw").resolve()
    assert closure_violations(fake / "tune/dvc.yaml", fake) == []


@pytest.mark.parametrize(
    ("dep", "complaint"),
    [
        ("stages/missing", "does not exist"),
        ("stages/tools/reader.py", "part of a library folder"),
        ("stages/engine/yolo", "part of a library folder"),
        ("stages", "the whole package"),
        ("stages/engine", "is not imported by the stage"),
    ],
)
def test_a_bad_code_dep_is_caught(fake: Path, dep: str, complaint: str) -> None:
    _write(fake, {"dvc.yaml": CLEAN_DVC.replace("- stages/tools\n", f"- stages/tools\n      - {dep}\n")})
    (problem,) = code_dep_violations(fake / "dvc.yaml", fake)
    assert problem.startswith(f"dvc.yaml:ingest dep {dep}") and complaint in problem


def test_a_command_that_is_not_a_module_is_reported(fake: Path) -> None:
    _write(fake, {"dvc.yaml": CLEAN_DVC.replace("python -m stages.ingest", "bash run.sh")})
    assert closure_violations(fake / "dvc.yaml", fake) == [
        "dvc.yaml:ingest: cmd 'bash run.sh' is not `python -m <module>`"
    ]
