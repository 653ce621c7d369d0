"""trainer/ is a pure library: it must never import Django or the web app."""

import ast
from pathlib import Path

TRAINER = Path(__file__).resolve().parents[2] / "trainer"
FORBIDDEN = {"django", "experiments", "rftweb", "channels", "celery", "rest_framework"}


def imported_top_level_modules(source: str) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in {
            "import_module",
            "__import__",
        }:
            for argument in node.args[:1]:
                if isinstance(argument, ast.Constant) and isinstance(argument.value, str):
                    names.add(argument.value.split(".")[0])
    return names


def test_no_file_under_trainer_imports_django_or_the_app():
    files = sorted(TRAINER.rglob("*.py"))
    assert files, "trainer/ has no Python files"
    offenders = {
        str(path.relative_to(TRAINER.parent)): sorted(
            imported_top_level_modules(path.read_text()) & FORBIDDEN
        )
        for path in files
    }
    offenders = {path: modules for path, modules in offenders.items() if modules}
    assert offenders == {}


def test_the_isolation_check_detects_an_offending_import():
    assert imported_top_level_modules("from django.db import models\n") == {"django"}
    assert imported_top_level_modules("import experiments.models as m\n") == {"experiments"}
    assert "rftweb" in imported_top_level_modules(
        "import importlib\nimportlib.import_module('rftweb.settings')\n"
    )
