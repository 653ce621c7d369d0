"""Errors of grader specs (shown on the form) and of grading (recorded per rollout)."""

from __future__ import annotations


class GraderSpecError(ValueError):
    """A grader definition that cannot be used; `errors` are "field.path: message" strings."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("; ".join(errors))
        self.errors = list(errors)

    def by_field(self) -> dict[str, list[str]]:
        """{"graders.a.reference": ["required"], ...} for placing messages next to form fields."""
        fields: dict[str, list[str]] = {}
        for error in self.errors:
            path, sep, message = error.partition(": ")
            fields.setdefault(path if sep else "", []).append(message if sep else error)
        return fields


class GraderError(Exception):
    """Grading failed; recorded as {"grader", "type", "message"} and never turned into a score of 0.

    Types: template, exception, timeout, memory, output_too_large, invalid_score, out_of_range,
    sandbox, formula, http_4xx, http_5xx, connection, blocked, too_large, invalid_response.
    """

    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.message = message
