"""Build hook: the wheel carries the top-level templates/, static/ and examples/ (the demo data)
inside the rftweb package.

The repository keeps them at the top level (the project's fixed layout); an installed app has no
checkout to read them from, so the build copies them into rftweb/ (rftweb/templates, ...), where
the settings look when they are not running from a checkout. Everything else is in pyproject.toml.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
ASSET_DIRS = ("templates", "static", "examples")


class BuildPyWithAssets(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install runs from the checkout, which has the folders
        for name in ASSET_DIRS:
            target = Path(self.build_lib) / "rftweb" / name
            if target.exists():
                shutil.rmtree(target)
            shutil.copytree(ROOT / name, target, ignore=shutil.ignore_patterns("__pycache__", ".*"))


setup(cmdclass={"build_py": BuildPyWithAssets})
