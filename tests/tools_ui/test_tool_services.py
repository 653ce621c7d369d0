"""Tool rules: JSON Schema parameters, OpenAI function import, write-only headers, delete protection."""

import pytest
from django.core.exceptions import ValidationError

from experiments.services import tools as tool_services
from tests.factories import RunFactory, ToolFactory

pytestmark = pytest.mark.django_db

GREP_PARAMETERS = {
    "type": "object",
    "properties": {"pattern": {"type": "string", "description": "A regular expression."}},
    "required": ["pattern"],
}


def messages_for(error: ValidationError, field: str) -> str:
    return " ".join(error.value.message_dict[field])


@pytest.mark.parametrize(
    ("parameters", "expected"),
    [
        (
            {"type": "object", "properties": {"q": {"type": "strin"}}},
            "parameters.properties.q.type: 'strin' is not a JSON Schema type",
        ),
        ({"type": "object", "properties": [], "required": []}, "parameters.properties: must be an object"),
        ({"type": "object", "properties": {}, "required": "q"}, "parameters.required: must be an array"),
        ({"type": "string"}, 'set "type": "object"'),
        (
            {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["query"]},
            "'query' is required but not described",
        ),
        ([], "must be a JSON object"),
    ],
)
def test_parameters_are_checked_as_a_json_schema_with_messages_that_point_to_the_field(
    alice, parameters, expected
):
    with pytest.raises(ValidationError) as error:
        tool_services.create_tool(
            owner=alice, name="grep", url="https://tools.example.com/grep", parameters=parameters
        )
    assert expected in messages_for(error, "parameters")


@pytest.mark.parametrize(
    "definition",
    [
        {
            "type": "function",
            "function": {
                "name": "grep",
                "description": "Search the repository.",
                "parameters": GREP_PARAMETERS,
            },
        },
        {"name": "grep", "description": "Search the repository.", "parameters": GREP_PARAMETERS},
        {
            "type": "function",
            "name": "grep",
            "description": "Search the repository.",
            "parameters": GREP_PARAMETERS,
        },
        '[{"type": "function", "function": {"name": "grep", "description": "Search the repository.", "parameters": '
        '{"type": "object", "properties": {"pattern": {"type": "string", "description": "A regular expression."}}, "required": ["pattern"]}}}]',
    ],
)
def test_an_openai_function_definition_imports_in_either_shape(definition):
    imported = tool_services.parse_function_definition(definition)
    assert imported == {
        "name": "grep",
        "description": "Search the repository.",
        "parameters": GREP_PARAMETERS,
    }


@pytest.mark.parametrize(
    ("definition", "expected"),
    [
        ('{"type": "function", "function": {"name": "grep",', "Not valid JSON"),
        ({"type": "file_search"}, "Only function tools"),
        ({"description": "no name"}, 'no "name"'),
        (
            {"name": "x", "parameters": {"type": "object", "properties": {"a": {"type": 3}}}},
            "parameters.properties.a.type",
        ),
    ],
)
def test_a_bad_definition_is_refused_with_the_reason(definition, expected):
    with pytest.raises(ValidationError) as error:
        tool_services.parse_function_definition(definition)
    assert expected in messages_for(error, "definition")


def test_names_are_function_names_and_unique_per_user(alice, bob):
    tool_services.create_tool(
        owner=alice, name="grep", url="https://t.example.com/", parameters=GREP_PARAMETERS
    )
    with pytest.raises(ValidationError) as error:
        tool_services.create_tool(
            owner=alice, name="grep", url="https://t.example.com/", parameters=GREP_PARAMETERS
        )
    assert "already have a tool named 'grep'" in messages_for(error, "name")
    with pytest.raises(ValidationError) as error:
        tool_services.create_tool(
            owner=alice, name="grep files", url="https://t.example.com/", parameters=GREP_PARAMETERS
        )
    assert "function name" in messages_for(error, "name")
    # Another user may use the same name.
    assert tool_services.create_tool(
        owner=bob, name="grep", url="https://t.example.com/", parameters=GREP_PARAMETERS
    ).pk


def test_an_edit_that_leaves_a_header_value_blank_keeps_the_stored_value(alice):
    tool = tool_services.create_tool(
        owner=alice,
        name="search",
        url="https://t.example.com/",
        parameters=GREP_PARAMETERS,
        headers=[("Authorization", "Bearer first-secret-value"), ("X-Team", "red-team-key")],
        signing_secret="whsec_original_secret",
    )
    tool_services.update_tool(
        tool=tool,
        headers=[("Authorization", ""), ("X-Extra", "new-extra-value")],  # X-Team left out: removed
        signing_secret="",
    )
    tool.refresh_from_db()
    assert tool.headers == {"Authorization": "Bearer first-secret-value", "X-Extra": "new-extra-value"}
    assert tool.signing_secret == "whsec_original_secret"
    tool_services.update_tool(
        tool=tool, headers=[("Authorization", "Bearer second")], clear_signing_secret=True
    )
    tool.refresh_from_db()
    assert tool.headers == {"Authorization": "Bearer second"}
    assert tool.signing_secret is None


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ([("X-New", "")], "The header X-New needs a value."),
        ([("Bad Header", "v")], "is not a valid header name"),
        ([("X-RFT-Rollout-Id", "v")], "set by rftweb itself"),
        ([("X-A", "1"), ("x-a", "2")], "listed twice"),
        ([("", "orphan")], "without a name"),
    ],
)
def test_bad_headers_are_refused(alice, headers, expected):
    with pytest.raises(ValidationError) as error:
        tool_services.create_tool(
            owner=alice, name="t", url="https://t.example.com/", parameters=GREP_PARAMETERS, headers=headers
        )
    assert expected in messages_for(error, "headers")


def test_a_tool_used_by_a_run_cannot_be_deleted(alice):
    tool = ToolFactory(owner=alice, name="grep")
    run = RunFactory(owner=alice, name="nightly")
    run.tools.add(tool)
    with pytest.raises(tool_services.ToolInUseError, match="used by 1 run \\('nightly'\\)"):
        tool_services.delete_tool(tool=tool)
    assert tool_services.Tool.objects.filter(pk=tool.pk).exists()
    run.tools.clear()
    tool_services.delete_tool(tool=tool)
    assert not tool_services.Tool.objects.filter(pk=tool.pk).exists()
