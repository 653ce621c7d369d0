"""Posting the new-run form in tests: every field at its initial value, then the test's changes."""

from __future__ import annotations


def form_data(form, **values) -> dict:
    data = {}
    for name, field in form.fields.items():
        initial = form.get_initial_for_field(field, name)
        if initial is not None and not isinstance(initial, bool):
            data[name] = initial
    data.update(values)
    return {key: value for key, value in data.items() if value is not None}
