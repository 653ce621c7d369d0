"""Reads never depend on writes, forms or views: no module under experiments/selectors/ imports
experiments.services, experiments.forms or experiments.views, directly or through another module of
the app it imports (a pure module such as experiments.watch.rules is fine)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = ("experiments.services", "experiments.forms", "experiments.views")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(source: str, *, module: str, is_package: bool) -> set[str]:
    """Absolute names of the modules a file imports (anywhere in it, relative imports resolved);
    `from package import name` counts both `package` and `package.name`."""
    package = module if is_package else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")
                base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in {
            "import_module",
            "__import__",
        }:
            for argument in node.args[:1]:
                if isinstance(argument, ast.Constant) and isinstance(argument.value, str):
                    names.add(argument.value)
    return names


def app_sources() -> dict[str, tuple[str, bool]]:
    """module name -> (source, is_package) for every module of the app."""
    return {
        module_name(path): (path.read_text(), path.name == "__init__.py")
        for path in (ROOT / "experiments").rglob("*.py")
    }


def forbidden_paths(start_modules: list[str], sources: dict[str, tuple[str, bool]]) -> dict[str, list[str]]:
    """For each start module, the import chain to a forbidden module, if any (following app modules)."""
    found: dict[str, list[str]] = {}
    for start in start_modules:
        chains = {start: [start]}
        queue = [start]
        while queue:
            current = queue.pop()
            source, is_package = sources[current]
            for name in sorted(imported_modules(source, module=current, is_package=is_package)):
                if name.startswith(FORBIDDEN):
                    found.setdefault(start, [*chains[current], name])
                    continue
                # A selector may read the models; their import of anything else is their business.
                if name in sources and name not in chains and not name.startswith("experiments.models"):
                    chains[name] = [*chains[current], name]
                    queue.append(name)
    return found


def test_no_selector_imports_services_forms_or_views():
    selectors = sorted(module_name(path) for path in (ROOT / "experiments" / "selectors").rglob("*.py"))
    assert len(selectors) >= 5
    assert forbidden_paths(selectors, app_sources()) == {}


def test_the_check_finds_direct_lazy_and_indirect_imports():
    module, package = "experiments.selectors.x", "experiments.selectors"
    assert "experiments.services.watch" in imported_modules(
        "from ..services.watch import ROLLOUT_RULES\n", module=module, is_package=False
    )
    assert "experiments.forms.runs" in imported_modules(
        "def f():\n    from ..forms import runs\n", module=module, is_package=False
    )
    assert "experiments.views" in imported_modules(
        "import importlib\nimportlib.import_module('experiments.views')\n", module=module, is_package=False
    )
    assert "experiments.selectors.metrics" in imported_modules(
        "from . import metrics\n", module=package, is_package=True
    )
    # through another app module, however deep
    sources = {
        "experiments.selectors.a": ("from ..helpers import b\n", False),
        "experiments.helpers": ("", True),
        "experiments.helpers.b": ("from experiments.forms.runs import RunForm\n", False),
    }
    found = forbidden_paths(["experiments.selectors.a"], sources)
    assert found == {
        "experiments.selectors.a": [
            "experiments.selectors.a",
            "experiments.helpers.b",
            "experiments.forms.runs",
        ]
    }
