from .api_token import ApiToken
from .base import OwnedQuerySet
from .dataset import Dataset, DatasetItem
from .environment import Environment, EnvironmentLease, McpServer
from .grader import Grader
from .playground import PlaygroundSession, PlaygroundStatus
from .readiness import GraderAudit, ReadinessReport, ReadinessStatus
from .run import Checkpoint, MetricPoint, MetricRollup, Run, RunEvent, RunStatus
from .tool import Tool
from .trajectory import Trajectory

__all__ = [
    "ApiToken",
    "Checkpoint",
    "Dataset",
    "DatasetItem",
    "Environment",
    "EnvironmentLease",
    "Grader",
    "GraderAudit",
    "McpServer",
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
