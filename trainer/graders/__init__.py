"""Graders: every type of PRODUCT.md, built from grader JSON, implementing `trainer.interfaces.Grader`."""

from trainer.graders.base import Grader
from trainer.graders.errors import GraderError, GraderSpecError
from trainer.graders.run import make_sample, run_grader
from trainer.graders.sandbox import SandboxLimits, sandbox_packages, sandbox_status
from trainer.graders.spec import GRADER_TYPES, GraderContext, build_grader, unmet_requirements

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
    "sandbox_packages",
    "sandbox_status",
    "unmet_requirements",
]
