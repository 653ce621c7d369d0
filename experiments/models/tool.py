from __future__ import annotations

from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.db import models

from ..fields import EncryptedJSONField
from .base import OwnedModel

function_name_validator = RegexValidator(
    r"^[a-zA-Z_][a-zA-Z0-9_-]{0,63}$",
    "A tool name is a function name: letters, digits, _ or -, starting with a letter or _, at most 64.",
)


class Tool(OwnedModel):
    """An HTTP endpoint the model may call during rollouts (the agent-RFT tool-call wire format)."""

    name = models.CharField(max_length=64, validators=[function_name_validator])
    description = models.TextField(blank=True)
    parameters = models.JSONField(default=dict)  # JSON Schema of the arguments
    url = models.URLField(max_length=2000)
    # Extra request headers; the values are secrets (encrypted, write-only in forms and the API).
    headers = EncryptedJSONField(default=dict, blank=True)
    signing_secret = EncryptedJSONField(null=True, blank=True)
    timeout_s = models.FloatField(default=30.0, validators=[MinValueValidator(0.1), MaxValueValidator(600)])
    max_response_bytes = models.PositiveIntegerField(
        default=1_000_000, validators=[MinValueValidator(1), MaxValueValidator(100_000_000)]
    )

    class Meta:
        ordering = ["name"]
        constraints = [models.UniqueConstraint(fields=["owner", "name"], name="tool_unique_name_per_owner")]

    def __str__(self) -> str:
        return self.name

    def openai_schema(self) -> dict:
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": self.parameters},
        }
