from .base import OwnedQuerySet
from .dataset import Dataset, DatasetItem
from .grader import Grader
from .playground import PlaygroundSession, PlaygroundStatus
from .readiness import GraderAudit, ReadinessReport, ReadinessStatus
from .run import Checkpoint, MetricPoint, MetricRollup, Run, RunEvent, RunStatus
from .tool import Tool
from .trajectory import Trajectory

__all__ = [
    "Checkpoint",
    "Dataset",
    "DatasetItem",
    "Grader",
    "GraderAudit",
    "MetricPoint",
    "MetricRollup",
    "OwnedQuerySet",
    "PlaygroundSession",
    "PlaygroundStatus",
    "ReadinessReport",
    "ReadinessStatus",
    "Run",
    "RunEvent",
    "RunStatus",
    "Tool",
    "Trajectory",
]
