"""Presentation helpers for long forms (the new-run form): which fields to show up front, which
sections hold values that differ from their defaults (opened, and listed at the top)."""

from __future__ import annotations

from django import template

register = template.Library()

# What a user sets for a short run: shown without expanding anything.
ESSENTIAL_SETTINGS = ("steps", "prompts_per_step", "group_size", "learning_rate", "eval_interval")


def _differs(bound_field) -> bool:
    value, default = bound_field.value(), bound_field.field.initial
    if value in (None, "") and default in (None, ""):
        return False
    field = bound_field.field
    try:
        # Both through the field: a text field's default may be written as a number (devices = 1).
        return field.to_python(value) != field.to_python(default)
    except Exception:  # an invalid value typed in: it differs, and its error shows at the field
        return True


@register.filter
def essential_fields(form) -> list:
    return [form[name] for name in ESSENTIAL_SETTINGS if name in form.fields]


@register.filter
def without_essentials(fields) -> list:
    return [field for field in fields if field.name not in ESSENTIAL_SETTINGS]


@register.filter
def changed_fields(fields) -> list:
    """The fields (of a section) whose value is not the trainer's default."""
    return [field for field in fields if _differs(field)]


@register.filter
def changed_settings(form) -> list[dict]:
    """Every trainer setting of the form whose value is not the default, for a summary at the top."""
    changed = []
    for _group, fields in form.hyperparameter_groups():
        for field in fields:
            if _differs(field):
                default = field.field.initial
                changed.append({"field": field, "default": "empty" if default in (None, "") else default})
    return changed
