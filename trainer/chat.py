"""Chat formatting: the tool-aware ChatML template, tool-call parsing, tool-result rendering.

Rollouts are kept as token ids ("tokens in, tokens out"): the prompt is rendered once with the chat
template, the model's tokens are appended as generated, and tool results are appended as the
rendered fragment below. `tool_response_fragment` must therefore render exactly what the template
renders for tool messages following an assistant turn; a unit test holds the two together.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from trainer.interfaces import ToolCall

TOOL_CALL_OPEN = "<tool_call>"
TOOL_CALL_CLOSE = "</tool_call>"
TOOL_RESPONSE_OPEN = "<tool_response>"
TOOL_RESPONSE_CLOSE = "</tool_response>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
END_OF_TEXT = "<|endoftext|>"

DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."

# Qwen2.5-style ChatML with tools. All literal output is written as {{ '...' }} so that whitespace
# is explicit; tool schemas go into the system turn, tool results come back as a user turn made of
# <tool_response> blocks, assistant tool calls render as <tool_call>{json}</tool_call>.
CHATML_TOOLS_TEMPLATE = (
    "{%- set first = messages[0] if messages else none -%}"
    "{%- if tools -%}"
    "{{ '<|im_start|>system\\n' }}"
    "{%- if first and first.role == 'system' -%}{{ first.content }}"
    "{%- else -%}{{ '" + DEFAULT_SYSTEM_PROMPT + "' }}{%- endif -%}"
    '{{ \'\\n\\n# Tools\\nCall a tool by writing <tool_call>{"name": <name>, "arguments": <json object>}'
    "</tool_call>. Available tools:\\n<tools>\\n' }}"
    "{%- for tool in tools -%}"
    "{{ (tool.function if tool.function is defined else tool) | tojson }}{{ '\\n' }}"
    "{%- endfor -%}"
    "{{ '</tools><|im_end|>\\n' }}"
    "{%- elif first and first.role == 'system' -%}"
    "{{ '<|im_start|>system\\n' + first.content + '<|im_end|>\\n' }}"
    "{%- endif -%}"
    "{%- for message in messages -%}"
    "{%- if message.role == 'system' -%}"
    "{%- elif message.role == 'tool' -%}"
    "{%- if loop.first or messages[loop.index0 - 1].role != 'tool' -%}{{ '<|im_start|>user\\n' }}{%- endif -%}"
    "{{ '<tool_response>\\n' + (message.content | string) + '\\n</tool_response>\\n' }}"
    "{%- if loop.last or messages[loop.index0 + 1].role != 'tool' -%}{{ '<|im_end|>\\n' }}{%- endif -%}"
    "{%- elif message.role == 'assistant' -%}"
    "{{ '<|im_start|>assistant\\n' }}{{ message.content or '' }}"
    "{%- for call in (message.tool_calls or []) -%}"
    "{%- set fn = call.function if call.function is defined else call -%}"
    "{{ '<tool_call>{\"name\": ' + (fn.name | tojson) + ', \"arguments\": ' }}"
    "{%- if fn.arguments is string -%}{{ fn.arguments }}{%- else -%}{{ fn.arguments | tojson }}{%- endif -%}"
    "{{ '}</tool_call>' }}"
    "{%- endfor -%}"
    "{{ '<|im_end|>\\n' }}"
    "{%- else -%}"
    "{{ '<|im_start|>' + message.role + '\\n' + (message.content | string) + '<|im_end|>\\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)


def tool_response_fragment(outputs: Sequence[str]) -> str:
    """What follows a generated assistant turn (which ends with <|im_end|>) when tools answered.

    Equals the template's rendering of the tool messages plus the next generation prompt.
    """
    blocks = "".join(f"{TOOL_RESPONSE_OPEN}\n{output}\n{TOOL_RESPONSE_CLOSE}\n" for output in outputs)
    return f"\n{IM_START}user\n{blocks}{IM_END}\n{IM_START}assistant\n"


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


@dataclass
class ParsedTurn:
    """One assistant turn split into its visible text, its tool calls and its malformed calls."""

    content: str  # the text outside <tool_call> blocks, stripped
    calls: list[ToolCall] = field(default_factory=list)
    # (call_id, raw text, reason) for every <tool_call> block that could not be understood.
    malformed: list[tuple[str, str, str]] = field(default_factory=list)

    @property
    def has_calls(self) -> bool:
        return bool(self.calls or self.malformed)


_TOOL_CALL_BLOCK = re.compile(re.escape(TOOL_CALL_OPEN) + r"(.*?)" + re.escape(TOOL_CALL_CLOSE), re.DOTALL)


def parse_tool_calls(text: str) -> ParsedTurn:
    """Finds every <tool_call>{"name": ..., "arguments": {...}}</tool_call> in an assistant turn.

    Several calls per turn are allowed. A block whose JSON is invalid, lacks a string "name", or has
    arguments that are not an object, and an opening tag without its closing tag, are malformed.
    """
    calls: list[ToolCall] = []
    malformed: list[tuple[str, str, str]] = []
    visible_parts: list[str] = []
    position = 0
    for match in _TOOL_CALL_BLOCK.finditer(text):
        visible_parts.append(text[position : match.start()])
        position = match.end()
        raw = match.group(1).strip()
        call, reason = _parse_call_json(raw)
        if call is None:
            malformed.append((new_call_id(), raw, reason))
        else:
            calls.append(call)
    rest = text[position:]
    unterminated = rest.find(TOOL_CALL_OPEN)
    if unterminated >= 0:
        raw = rest[unterminated + len(TOOL_CALL_OPEN) :].strip()
        malformed.append((new_call_id(), raw, "the <tool_call> block is not closed with </tool_call>"))
        rest = rest[:unterminated]
    visible_parts.append(rest)
    content = "".join(visible_parts).replace(TOOL_CALL_CLOSE, "").strip()
    return ParsedTurn(content=content, calls=calls, malformed=malformed)


def _parse_call_json(raw: str) -> tuple[ToolCall | None, str]:
    try:
        payload = json.loads(raw)
    except (json.JSONDecodeError, RecursionError) as error:
        return None, f"the tool call is not valid JSON ({error.msg if hasattr(error, 'msg') else error})"
    if not isinstance(payload, dict):
        return None, 'the tool call must be a JSON object with "name" and "arguments"'
    name = payload.get("name")
    if not isinstance(name, str) or not name.strip():
        return None, 'the tool call needs a string "name"'
    arguments = payload.get("arguments", payload.get("parameters", {}))
    if isinstance(arguments, str):
        # Some models write the arguments as a JSON string, as the OpenAI API does.
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError:
            return None, '"arguments" is a string that is not valid JSON'
    if arguments is None:
        arguments = {}
    if not isinstance(arguments, dict):
        return None, '"arguments" must be a JSON object'
    return ToolCall(call_id=new_call_id(), name=name.strip(), arguments=json.dumps(arguments)), ""


def tool_names(tools: Sequence[Mapping[str, Any]]) -> list[str]:
    names = []
    for tool in tools:
        function = tool.get("function", tool)
        name = function.get("name") if isinstance(function, Mapping) else None
        if isinstance(name, str):
            names.append(name)
    return names


def openai_tool_call(call: ToolCall) -> dict[str, Any]:
    return {
        "id": call.call_id,
        "type": "function",
        "function": {"name": call.name, "arguments": call.arguments},
    }


def template_renders_tools(tokenizer: Any) -> bool:
    """Whether the tokenizer's own chat template shows tool schemas and assistant tool calls."""
    if not getattr(tokenizer, "chat_template", None):
        return False
    probe_tool = {
        "type": "function",
        "function": {"name": "probe_tool_xyz", "description": "d", "parameters": {"type": "object"}},
    }
    messages = [
        {"role": "user", "content": "hi"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "probe_call_abc", "arguments": "{}"}}
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "probe_result_123"},
    ]
    try:
        text = tokenizer.apply_chat_template(messages, tools=[probe_tool], tokenize=False)
    except Exception:  # any template failure means "cannot render tools"
        return False
    return all(marker in text for marker in ("probe_tool_xyz", "probe_call_abc", "probe_result_123"))
