from .api_token import ApiToken
from .base import OwnedQuerySet
from .dataset import Dataset, DatasetItem
from .grader import Grader
from .readiness import GraderAudit, ReadinessReport, ReadinessStatus
from .run import Checkpoint, MetricPoint, MetricRollup, Run, RunEvent, RunStatus
from .tool import Tool
from .trajectory import Trajectory

__all__ = [
    "ApiToken",
    "Checkpoint",
    "Dataset",
    "DatasetItem",
    "Grader",
    "GraderAudit",
    "MetricPoint",
    "MetricRollup",
    "OwnedQuerySet",
    "ReadinessReport",
    "ReadinessStatus",
    "Run",
    "RunEvent",
    "RunStatus",
    "Tool",
    "Trajectory",
]
