"""Graders: every type of PRODUCT.md, built from grader JSON, implementing `trainer.interfaces.Grader`."""

from experiments.graders.base import Grader
from experiments.graders.errors import GraderError, GraderSpecError
from experiments.graders.run import make_sample, run_grader
from experiments.graders.sandbox import SandboxLimits, sandbox_status
from experiments.graders.spec import GRADER_TYPES, GraderContext, build_grader

__all__ = [
    "GRADER_TYPES",
    "Grader",
    "GraderContext",
    "GraderError",
    "GraderSpecError",
    "SandboxLimits",
    "build_grader",
    "make_sample",
    "run_grader",
    "sandbox_status",
]
