"""Grader rules: pasted JSON as is, errors by field path, secrets kept out of the spec, versions,
delete protection, and "Run grader" against the real demo grader server."""

import pytest
from django.db import connection

from experiments.models import Grader
from experiments.services import graders as grader_services
from tests.factories import GraderFactory, RunFactory
from trainer.graders import sandbox_status

pytestmark = pytest.mark.django_db

STRING_CHECK = {
    "type": "string_check",
    "name": "exact",
    "input": "{{sample.output_text}}",
    "reference": "{{item.answer}}",
    "operation": "eq",
}
TEXT_SIMILARITY = {
    "type": "text_similarity",
    "name": "sim",
    "input": "{{sample.output_text}}",
    "reference": "{{item.answer}}",
    "evaluation_metric": "fuzzy_match",
}


def test_grader_json_in_the_widely_used_shape_is_accepted_as_is(alice):
    grader = grader_services.create_grader(owner=alice, spec=STRING_CHECK)
    assert (grader.name, grader.type, grader.version, grader.spec) == (
        "exact",
        "string_check",
        1,
        STRING_CHECK,
    )
    grader = grader_services.create_grader(owner=alice, spec=TEXT_SIMILARITY)
    assert grader.type == "text_similarity"
    multi = {
        "type": "multi",
        "name": "total",
        "graders": {"a": STRING_CHECK, "b": TEXT_SIMILARITY},
        "calculate_output": "0.7 * a + 0.3 * b",
    }
    assert grader_services.create_grader(owner=alice, spec=multi).type == "multi"


def test_errors_point_at_the_field_even_inside_a_multi_grader(alice):
    bad = {
        "type": "multi",
        "name": "total",
        "graders": {
            "a": {**STRING_CHECK, "operation": "equals"},
            "b": {"type": "text_similarity", "input": "{{sample.output_text}}"},
        },
        "calculate_output": "0.5 * a + 0.5 * c",
    }
    with pytest.raises(grader_services.GraderValidationError) as error:
        grader_services.create_grader(owner=alice, spec=bad)
    by_path = error.value.by_path
    assert "must be one of eq, ne, like, ilike" in by_path["graders.a.operation"][0]
    assert by_path["graders.b.reference"] == ["required"]
    assert "calculate_output" in by_path
    assert not Grader.objects.exists()


def test_names_are_unique_per_user(alice, bob):
    grader_services.create_grader(owner=alice, spec=STRING_CHECK)
    with pytest.raises(grader_services.GraderValidationError) as error:
        grader_services.create_grader(owner=alice, spec=STRING_CHECK)
    assert "already have a grader named 'exact'" in error.value.by_path["name"][0]
    assert grader_services.create_grader(owner=bob, spec=STRING_CHECK).pk


def test_secrets_are_kept_out_of_the_spec_masked_on_read_and_kept_when_pasted_back_masked(alice):
    spec = {
        "type": "multi",
        "name": "total",
        "graders": {
            "remote": {
                "type": "endpoint",
                "url": "https://grader.example.com/grade",
                "headers": {"Authorization": "Bearer ENDPOINT-SECRET-000111"},
                "signing_secret": "whsec-ENDPOINT-SIGNING-222",
            },
            "judge": {
                "type": "score_model",
                "model": "judge-1",
                "base_url": "https://judge.example.com/v1",
                "api_key": "sk-JUDGE-SECRET-333444",
                "input": [{"role": "user", "content": "{{sample.output_text}}"}],
            },
        },
        "calculate_output": "0.5 * remote + 0.5 * judge",
    }
    grader = grader_services.create_grader(owner=alice, spec=spec)
    grader.refresh_from_db()
    assert "SECRET" not in str(grader.spec) and "SIGNING" not in str(grader.spec)
    assert grader.spec["graders"]["remote"]["headers"] == {"Authorization": ""}
    assert grader.secrets["graders.judge"] == {"api_key": "sk-JUDGE-SECRET-333444"}
    masked = grader_services.masked_spec(grader)
    assert masked["graders"]["remote"]["headers"] == {"Authorization": "••••0111"}
    assert masked["graders"]["judge"]["api_key"] == "••••3444"
    assert grader_services.grading_spec(grader) == spec

    with connection.cursor() as cursor:
        cursor.execute("SELECT spec::text, secrets FROM experiments_grader WHERE id = %s", [grader.pk])
        raw_spec, raw_secrets = cursor.fetchone()
    assert "SECRET" not in raw_spec and raw_secrets.startswith("gAAAA") and "SECRET" not in raw_secrets

    # Pasting the masked JSON back changes nothing: same secrets, same version.
    grader_services.update_grader(grader=grader, spec=masked)
    grader.refresh_from_db()
    assert grader.version == 1 and grader_services.grading_spec(grader) == spec
    # A new value replaces the stored one and bumps the version.
    masked["graders"]["judge"]["api_key"] = "sk-NEW-KEY-555666777"
    grader_services.update_grader(grader=grader, spec=masked)
    grader.refresh_from_db()
    assert grader.version == 2 and grader.secrets["graders.judge"]["api_key"] == "sk-NEW-KEY-555666777"


def test_a_new_endpoint_header_needs_a_value(alice):
    spec = {
        "type": "endpoint",
        "name": "remote",
        "url": "https://grader.example.com/grade",
        "headers": {"X-Key": ""},
    }
    with pytest.raises(grader_services.GraderValidationError) as error:
        grader_services.create_grader(owner=alice, spec=spec)
    assert error.value.by_path["headers"] == ["X-Key: enter the header value"]


def test_every_spec_edit_bumps_the_version(alice):
    grader = grader_services.create_grader(owner=alice, spec=STRING_CHECK)
    grader_services.update_grader(grader=grader, spec={**STRING_CHECK, "operation": "ilike"})
    grader_services.update_grader(grader=grader, spec={**STRING_CHECK, "operation": "ilike"})  # no change
    grader.refresh_from_db()
    assert (grader.version, grader.spec["operation"]) == (2, "ilike")


def test_a_grader_that_scores_a_run_cannot_be_deleted(alice):
    grader = GraderFactory(owner=alice, name="exact")
    RunFactory(owner=alice, name="nightly", grader=grader)
    with pytest.raises(grader_services.GraderInUseError, match="scores 1 run \\('nightly'\\)"):
        grader_services.delete_grader(grader=grader)
    assert Grader.objects.filter(pk=grader.pk).exists()


def test_run_grader_reports_score_sub_scores_errors_by_type_and_latency(alice, demo_server):
    spec = {
        "type": "multi",
        "name": "total",
        "graders": {
            "exact": STRING_CHECK,
            "remote": {"type": "endpoint", "url": demo_server.grade_url},
            "down": {"type": "endpoint", "url": "http://127.0.0.1:9/grade"},
        },
        "calculate_output": "0.5 * exact + 0.5 * remote",
    }
    report = grader_services.run_spec(
        spec=spec, secrets={}, output_text="The answer is 42", item={"answer": "42"}
    )
    assert report.sub_scores == {"exact": 0.0, "remote": 1.0}
    assert report.errors_by_type == {"connection": 1}
    assert report.errors[0]["grader"] == "down"
    assert report.score == pytest.approx(0.5)  # "down" is not in the formula; its error is still shown
    assert report.latency_ms > 0

    needs_down = grader_services.run_spec(
        spec={**spec, "calculate_output": "exact + down"}, secrets={}, output_text="42", item={"answer": "42"}
    )
    assert needs_down.score is None  # a failed sub-grader is an error, never a silent zero
    assert needs_down.sub_scores["exact"] == 1.0


@pytest.mark.skipif(not sandbox_status().available, reason=sandbox_status().reason)
def test_the_python_example_runs_in_the_sandbox(alice):
    spec = {
        "type": "python",
        "name": "f1",
        "source": "def grade(sample, item) -> float:\n    return 0.25 if sample['output_text'] else 0.0\n",
    }
    grader = grader_services.create_grader(owner=alice, spec=spec)
    assert grader_services.run_stored_grader(grader=grader, output_text="x", item={}).score == 0.25
