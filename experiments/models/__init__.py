from .base import OwnedQuerySet
from .dataset import Dataset, DatasetItem
from .grader import Grader
from .run import Checkpoint, MetricPoint, Run, RunEvent, RunStatus
from .tool import Tool
from .trajectory import Trajectory

__all__ = [
    "Checkpoint",
    "Dataset",
    "DatasetItem",
    "Grader",
    "MetricPoint",
    "OwnedQuerySet",
    "Run",
    "RunEvent",
    "RunStatus",
    "Tool",
    "Trajectory",
]
