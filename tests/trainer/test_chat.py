"""Tool-call parsing, the tool-aware template, and the tiny tokenizer's stability across a reload."""

from __future__ import annotations

import json

from trainer.chat import (
    CHATML_TOOLS_TEMPLATE,
    parse_tool_calls,
    template_renders_tools,
    tool_response_fragment,
)

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "lookup",
            "description": "Looks a key up.",
            "parameters": {"type": "object", "properties": {"key": {"type": "string"}}},
        },
    }
]


def test_a_valid_call_is_parsed_and_removed_from_the_visible_text():
    parsed = parse_tool_calls(
        'Let me check. <tool_call>{"name": "lookup", "arguments": {"key": "a"}}</tool_call>'
    )
    assert parsed.content == "Let me check."
    assert [(c.name, json.loads(c.arguments)) for c in parsed.calls] == [("lookup", {"key": "a"})]
    assert parsed.malformed == []
    assert parsed.calls[0].call_id.startswith("call_")


def test_several_calls_in_one_turn_keep_their_order_and_get_distinct_ids():
    parsed = parse_tool_calls(
        '<tool_call>{"name": "a", "arguments": {}}</tool_call>\n'
        '<tool_call>\n{"name": "b", "arguments": "{\\"x\\": 1}"}\n</tool_call>'
        '<tool_call>{"name": "c"}</tool_call>'
    )
    assert [c.name for c in parsed.calls] == ["a", "b", "c"]
    assert json.loads(parsed.calls[1].arguments) == {"x": 1}
    assert json.loads(parsed.calls[2].arguments) == {}
    assert len({c.call_id for c in parsed.calls}) == 3


def test_malformed_calls_are_reported_with_a_reason_and_valid_ones_still_run():
    parsed = parse_tool_calls(
        '<tool_call>{"name": "a", "arguments": {}}</tool_call>'
        "<tool_call>{not json}</tool_call>"
        '<tool_call>{"arguments": {}}</tool_call>'
        '<tool_call>{"name": "b", "arguments": [1]}</tool_call>'
        '<tool_call>{"name": "c", "arguments": {}'
    )
    assert [c.name for c in parsed.calls] == ["a"]
    reasons = [reason for _, _, reason in parsed.malformed]
    assert len(reasons) == 4
    assert "not valid JSON" in reasons[0]
    assert '"name"' in reasons[1]
    assert "object" in reasons[2]
    assert "not closed" in reasons[3]
    assert parsed.has_calls


def test_text_without_calls_is_a_final_answer():
    parsed = parse_tool_calls("  The answer is 42.  ")
    assert parsed.content == "The answer is 42." and not parsed.has_calls


def test_template_renders_tools_calls_and_responses(tiny_tokenizer):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Find a."},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "lookup", "arguments": '{"key": "a"}'}},
                {"id": "c2", "type": "function", "function": {"name": "lookup", "arguments": {"key": "b"}}},
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "one"},
        {"role": "tool", "tool_call_id": "c2", "content": "two"},
        {"role": "assistant", "content": "one and two"},
    ]
    text = tiny_tokenizer.apply_chat_template(messages, tools=TOOLS, tokenize=False)
    assert '"name": "lookup"' in text and "Be brief." in text
    assert '<tool_call>{"name": "lookup", "arguments": {"key": "a"}}</tool_call>' in text
    assert '<tool_call>{"name": "lookup", "arguments": {"key": "b"}}</tool_call>' in text
    assert template_renders_tools(tiny_tokenizer)


def test_tool_response_fragment_matches_the_template(tiny_tokenizer):
    """Rollouts append the fragment to generated tokens; it must read exactly like the template."""
    before = [
        {"role": "user", "content": "Find a."},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"id": "c1", "function": {"name": "lookup", "arguments": "{}"}}],
        },
    ]
    after = [*before, {"role": "tool", "content": "one"}, {"role": "tool", "content": "two"}]
    rendered_before = tiny_tokenizer.apply_chat_template(before, tools=TOOLS, tokenize=False)
    rendered_after = tiny_tokenizer.apply_chat_template(
        after, tools=TOOLS, tokenize=False, add_generation_prompt=True
    )
    assert rendered_before.endswith("<|im_end|>\n")
    assert rendered_before[: -len("\n")] + tool_response_fragment(["one", "two"]) == rendered_after


def test_tiny_tokenizer_ids_survive_save_and_auto_reload(tiny_model_dir, tiny_tokenizer):
    from trainer.tiny import build_tiny_tokenizer

    fresh = build_tiny_tokenizer()
    text = 'Qué? <tool_call>{"name": "peek", "arguments": {}}</tool_call><|im_end|>\n ünïcode 12345\r\n\tend'
    assert type(tiny_tokenizer).__name__ == "Qwen2Tokenizer"
    assert fresh.encode(text) == tiny_tokenizer.encode(text)
    assert tiny_tokenizer.decode(tiny_tokenizer.encode(text)) == text
    assert tiny_tokenizer.chat_template == CHATML_TOOLS_TEMPLATE
