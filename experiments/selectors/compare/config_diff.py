"""The config diff: one column per run, one row per trainer setting (in the config's own groups and
order, defaults filled in) and per identity (base model, datasets, tools, grader version)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from trainer.config import GROUPS, defaults, settings

from ...models import Run


def _display(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list | dict):
        return json.dumps(value, sort_keys=True)
    return str(value)


def _identity_rows(runs: Sequence[Run]) -> list[tuple[str, str, list[Any]]]:
    def dataset(ds) -> str | None:
        return None if ds is None else f"{ds.name} (#{ds.pk})"

    return [
        ("base_model", "Identity", [run.base_model for run in runs]),
        ("train_dataset", "Identity", [dataset(run.train_dataset) for run in runs]),
        ("eval_dataset", "Identity", [dataset(run.eval_dataset) for run in runs]),
        (
            "tools",
            "Identity",
            [
                ", ".join(
                    f"{tool.name} (#{tool.pk})" for tool in sorted(run.tools.all(), key=lambda t: t.name)
                )
                or None
                for run in runs
            ],
        ),
        (
            "grader",
            "Identity",
            [f"{run.grader.name} (#{run.grader_id}) v{run.grader.version}" for run in runs],
        ),
    ]


def config_diff(*, runs: Sequence[Run], differences_only: bool = True) -> dict:
    """One column per run, one row per config field (trainer defaults filled in) and per identity
    (base model, datasets, tools, grader with its version).

    `{"runs": [ids], "rows": [{"field", "group", "help", "values": [str per run], "raw": [...],
    "is_default": [bool per run], "differs": bool}], "total": n, "differing": m}`; with
    `differences_only` only rows whose values are not all equal.
    """
    # The trainer's `model` is the run's base model, already an identity row.
    plain_defaults = defaults()  # `extra` (built by a factory) is shown only where a run sets it
    config_settings = [s for s in settings() if s.name in plain_defaults and s.name != "model"]
    default_of = {setting.name: setting.default for setting in config_settings}
    rows: list[dict] = []
    for name, group, values in _identity_rows(runs):
        rows.append(
            {
                "field": name,
                "group": group,
                "help": "",
                "raw": values,
                "values": [_display(v) for v in values],
                "is_default": [False] * len(values),
            }
        )
    # The config's own sections and order; keys the trainer does not know (older runs) come last.
    known = sorted(config_settings, key=lambda setting: GROUPS.index(setting.group))
    unknown = sorted({key for run in runs for key in (run.config or {}) if key not in default_of})
    described = [(s.name, s.group, s.help) for s in known]
    for name, group, help_text in described + [
        (key, "Other", "Not a setting of this trainer.") for key in unknown
    ]:
        values, is_default = [], []
        for run in runs:
            config = run.config or {}
            values.append(config.get(name, default_of.get(name)))
            is_default.append(name not in config or config[name] == default_of.get(name))
        rows.append(
            {
                "field": name,
                "group": group,
                "help": help_text,
                "raw": values,
                "values": [_display(v) for v in values],
                "is_default": is_default,
            }
        )
    for row in rows:
        row["differs"] = len(set(row["values"])) > 1
    differing = sum(1 for row in rows if row["differs"])
    shown = [row for row in rows if row["differs"]] if differences_only else rows
    return {
        "runs": [run.pk for run in runs],
        "differences_only": differences_only,
        "total": len(rows),
        "differing": differing,
        "rows": shown,
    }
