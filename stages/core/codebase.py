"""The project's own source as data: which files a module imports, and a digest of them.

Two things depend on this and must agree: every cache key and run fingerprint (so a code
change invalidates what the old code computed) and the test that checks ``dvc.yaml``'s deps
cover each stage's imports. Both use the same static import closure: every ``stages.*`` /
``pipelines.*`` import anywhere in a file (top level or inside a function, since a lazy
import is still code the stage runs), plus the ``__init__.py`` of every package on the way.
Pure standard library (``ast``, ``hashlib``): importing it costs nothing.
"""

from __future__ import annotations

import ast
import hashlib
import json
from functools import cache
from importlib import metadata
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
PROJECT_PACKAGES = ("stages", "pipelines")

# The libraries whose version decides the numbers a cached result holds.
NUMERIC_LIBRARIES = ("torch", "torchvision", "timm", "ultralytics", "albumentations", "pillow", "numpy")


def module_file(module: str, root: Path = PROJECT_ROOT) -> Path | None:
    """``stages.core.params`` -> its ``.py`` file (or package ``__init__.py``) under ``root``."""
    base = root.joinpath(*module.split("."))
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    return None


def _is_project(module: str) -> bool:
    return module.split(".")[0] in PROJECT_PACKAGES


def _package_inits(module: str, root: Path) -> list[Path]:
    """Importing ``a.b.c`` runs ``a/__init__.py`` and ``a/b/__init__.py`` first."""
    parts = module.split(".")
    inits = [root.joinpath(*parts[:i], "__init__.py") for i in range(1, len(parts))]
    return [p for p in inits if p.is_file()]


def imported_modules(file: Path, root: Path = PROJECT_ROOT) -> set[str]:
    """Project modules one file imports, wherever in the file the import statement is."""
    tree = ast.parse(file.read_text(encoding="utf-8"), filename=str(file))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if _is_project(a.name))
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and _is_project(node.module or ""):
            assert node.module is not None
            found.add(node.module)
            for alias in node.names:  # `from stages.metrics import detection` imports a module
                if module_file(f"{node.module}.{alias.name}", root) is not None:
                    found.add(f"{node.module}.{alias.name}")
    return found


@cache
def import_closure(module: str, root: Path = PROJECT_ROOT) -> frozenset[Path]:
    """Every project file that importing ``module`` (and running what it imports) can load."""
    seen: set[Path] = set()
    pending = [module]
    while pending:
        name = pending.pop()
        file = module_file(name, root)
        if file is None:
            raise ModuleNotFoundError(f"{name} is not a module under {root}")
        for init in _package_inits(name, root):
            if init not in seen:
                seen.add(init)
                pending.extend(imported_modules(init, root))
        if file in seen:
            continue
        seen.add(file)
        pending.extend(imported_modules(file, root))
    return frozenset(seen)


def library_versions(names: tuple[str, ...] = NUMERIC_LIBRARIES) -> dict[str, str]:
    """Installed versions, read from package metadata (no import); absent ones as ``-``."""
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "-"
    return versions


@cache
def code_digest(*modules: str, root: Path = PROJECT_ROOT) -> str:
    """sha256 of the source of ``modules`` and all they import, plus the numeric libraries' versions.

    A cache keyed on this cannot hand back a result that other code, or another torch,
    would have computed differently.
    """
    files = sorted(set().union(*(import_closure(m, root) for m in modules)))
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.relative_to(root).as_posix().encode())
        digest.update(b"\0")
        digest.update(hashlib.sha256(file.read_bytes()).digest())
    digest.update(json.dumps(library_versions(), sort_keys=True).encode())
    return digest.hexdigest()[:16]
