"""The demo's stateful environment: a small file tree per rollout (trace_id).

Lifecycle (HTTP, on the demo server): ``POST /env/start {"trace_id", "item", ...}`` creates the
rollout's tree from ``item.files`` (or the default project) and answers its file list and its
workspace id (derived from the trace_id) as context; ``POST /env/end {"trace_id", ...}`` deletes it
(repeated ends are harmless). ``GET /env/log`` lists every start and end seen (the lifecycle's
audit trail); `FileTrees.calls` keeps every tool call with its rollout and answer.

Tools (HTTP at ``POST /tools/<name>`` like the other demo tools, and on the demo MCP server), each
acting on the tree of the calling rollout (X-RFT-Rollout-Id / ``_meta.trace_id``):

``workspace_list_files {}``                         the paths, one per line
``workspace_read_file {"path"}``                    the file's text
``workspace_write_file {"path", "content"}``        creates or replaces a file

Grader (``POST /env/grade {"sample", "item", "trace_id"}``): checks the final state of the tree
before the end removes it: 1.0 when every ``item.expected_files[path]`` is in the file (text
compared with spacing normalized), partial credit per file, 0.0 without a tree.
"""

from __future__ import annotations

import hashlib
import json
import random
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

MAX_TREES = 2_000  # live trees kept at most (a run's max_live is far below; protects the demo)
MAX_FILE_CHARS = 20_000
MAX_FILES = 200
MAX_CALLS_KEPT = 10_000

DEFAULT_FILES = {
    "README.md": "# notes\n\nA tiny project.\n",
    "src/app.py": 'GREETING = "hello"\n\n\ndef greet(name):\n    return f"{GREETING}, {name}"\n',
    "src/config.py": "DEBUG = True\nVERSION = '1.0.0'\n",
}

FILETREE_TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "workspace_list_files",
            "description": "List the files of your workspace (one path per line).",
            "parameters": {"type": "object", "properties": {}, "additionalProperties": False},
        },
    },
    {
        "type": "function",
        "function": {
            "name": "workspace_read_file",
            "description": "Read one file of your workspace.",
            "parameters": {
                "type": "object",
                "properties": {"path": {"type": "string", "description": "e.g. src/app.py"}},
                "required": ["path"],
                "additionalProperties": False,
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "workspace_write_file",
            "description": "Create or replace one file of your workspace with the given content.",
            "parameters": {
                "type": "object",
                "properties": {
                    "path": {"type": "string", "description": "e.g. src/config.py"},
                    "content": {"type": "string", "description": "the whole new text of the file"},
                },
                "required": ["path", "content"],
                "additionalProperties": False,
            },
        },
    },
]
FILETREE_TOOL_NAMES = tuple(tool["function"]["name"] for tool in FILETREE_TOOLS)


class FileTreeError(Exception):
    """Bad input or no workspace: answered with a 4xx (HTTP) or isError (MCP) the model reads."""

    def __init__(self, message: str, *, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def _normalize(text: str) -> str:
    return " ".join(text.split())


def workspace_id(trace_id: str) -> str:
    """The short name of a rollout's workspace, shown in its context."""
    return "ws-" + hashlib.sha256(trace_id.encode()).hexdigest()[:8]


class FileTrees:
    """Every live rollout's file tree, and the log of starts and ends."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._trees: OrderedDict[str, dict[str, str]] = OrderedDict()
        self.log: list[dict[str, Any]] = []
        # {"trace_id", "name", "arguments", "ok", "output"} per tool call, oldest forgotten first.
        self.calls: deque[dict[str, Any]] = deque(maxlen=MAX_CALLS_KEPT)
        self.live_max = 0

    def start(self, trace_id: str, item: dict[str, Any]) -> dict[str, Any]:
        files = item.get("files") if isinstance(item.get("files"), dict) else DEFAULT_FILES
        tree = {str(path): str(text) for path, text in list(files.items())[:MAX_FILES]}
        with self._lock:
            self._trees[trace_id] = tree
            while len(self._trees) > MAX_TREES:
                self._trees.popitem(last=False)
            self.live_max = max(self.live_max, len(self._trees))
            self.log.append({"event": "start", "trace_id": trace_id, "at": time.time()})
        listing = "\n".join(sorted(tree))
        return {
            "context": (
                f"Your workspace (workspace_* tools) holds these files:\n{listing}\n"
                f"Workspace id: {workspace_id(trace_id)}"
            ),
        }

    def end(self, trace_id: str, payload: dict[str, Any]) -> None:
        with self._lock:
            self._trees.pop(trace_id, None)
            self.log.append(
                {
                    "event": "end",
                    "trace_id": trace_id,
                    "finish_reason": payload.get("finish_reason"),
                    "reward": payload.get("reward"),
                    "at": time.time(),
                }
            )

    def live(self) -> int:
        with self._lock:
            return len(self._trees)

    def _tree(self, trace_id: str) -> dict[str, str]:
        tree = self._trees.get(trace_id)
        if tree is None:
            raise FileTreeError(
                "no workspace for this rollout (it was not started, or it has ended)", status=409
            )
        return tree

    def call(self, trace_id: str, name: str, arguments: dict[str, Any]) -> str:
        """Runs one tool call on the rollout's tree (and records it); FileTreeError for bad calls."""
        record = {"trace_id": trace_id, "name": name, "arguments": dict(arguments), "at": time.time()}
        try:
            output = self._call(trace_id, name, arguments)
        except FileTreeError as exc:
            self.calls.append({**record, "ok": False, "output": str(exc)})
            raise
        self.calls.append({**record, "ok": True, "output": output})
        return output

    def _call(self, trace_id: str, name: str, arguments: dict[str, Any]) -> str:
        with self._lock:
            tree = self._tree(trace_id)
            if name == "workspace_list_files":
                return "\n".join(sorted(tree)) or "(no files)"
            path = arguments.get("path")
            if not isinstance(path, str) or not path.strip() or ".." in path.split("/"):
                raise FileTreeError('"path" must be a relative file path such as src/app.py')
            path = path.strip().lstrip("./")
            if name == "workspace_read_file":
                if path not in tree:
                    raise FileTreeError(f"no file {path!r}; workspace_list_files lists them", status=404)
                return tree[path]
            if name == "workspace_write_file":
                content = arguments.get("content")
                if not isinstance(content, str):
                    raise FileTreeError('"content" must be a string')
                if len(content) > MAX_FILE_CHARS:
                    raise FileTreeError(f"a file holds at most {MAX_FILE_CHARS} characters")
                if path not in tree and len(tree) >= MAX_FILES:
                    raise FileTreeError(f"the workspace holds at most {MAX_FILES} files")
                tree[path] = content
                return f"wrote {path} ({len(content)} characters)"
        raise FileTreeError(f"unknown tool {name!r}", status=404)

    def grade(self, trace_id: str, item: dict[str, Any]) -> dict[str, Any]:
        expected = item.get("expected_files")
        if not isinstance(expected, dict) or not expected:
            raise FileTreeError('the item needs "expected_files": {path: text the file must contain}')
        with self._lock:
            tree = self._trees.get(trace_id)
            if tree is None:
                return {"score": 0.0, "files_ok": 0.0}
            matched = sum(
                1
                for path, text in expected.items()
                if _normalize(str(text)) in _normalize(tree.get(path, ""))
            )
        score = matched / len(expected)
        return {"score": score, "files_ok": float(matched)}


# --- demonstrations: a warm start that makes the tiny model use the workspace tools ------------------


def _edited(original: str | None, text: str) -> str:
    """A file that contains `text`: `original` with the matching line replaced (``KEY = ...``, a
    ``#`` title) or with `text` appended; just `text` for a new file."""
    if original is None:
        return f"{text}\n"
    lines = original.splitlines()
    key = text.split(" = ")[0] + " =" if " = " in text else ("#" if text.startswith("#") else None)
    for index, line in enumerate(lines):
        if key is not None and line.startswith(key):
            lines[index] = text
            return "\n".join(lines) + "\n"
    return original + ("" if original.endswith("\n") or not original else "\n") + f"{text}\n"


def _tool_call(call_id: str, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    return {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {
                "id": call_id,
                "type": "function",
                "function": {"name": name, "arguments": json.dumps(arguments)},
            }
        ],
    }


def demonstration_chat(item: dict[str, Any], *, trace_id: str) -> list[dict[str, Any]]:
    """How an agent solves `item` (an item with ``expected_files``): read the file to change (or list
    the workspace when it is a new file), write it whole, say what changed. The system prompt carries
    the environment's context as rftweb appends it; the tool answers come from a real `FileTrees`."""
    from trainer.environments import CONTEXT_HEADING

    trees = FileTrees()
    context = trees.start(trace_id, item)["context"]
    messages = [dict(message) for message in item["messages"]]
    if messages and messages[0].get("role") == "system":
        messages[0]["content"] = f"{messages[0]['content']}\n\n{CONTEXT_HEADING}\n{context}"
    else:
        messages.insert(0, {"role": "system", "content": f"{CONTEXT_HEADING}\n{context}"})
    path, text = next(iter(item["expected_files"].items()))
    tree = trees._trees[trace_id]
    first = ("workspace_read_file", {"path": path}) if path in tree else ("workspace_list_files", {})
    second = ("workspace_write_file", {"path": path, "content": _edited(tree.get(path), str(text))})
    for index, (name, arguments) in enumerate((first, second)):
        call_id = f"call_{index}"
        messages.append(_tool_call(call_id, name, arguments))
        messages.append(
            {"role": "tool", "tool_call_id": call_id, "content": trees.call(trace_id, name, arguments)}
        )
    messages.append({"role": "assistant", "content": f"I changed {path}."})
    return messages


def demonstration_chats(
    items: Sequence[dict[str, Any]], *, count: int, seed: int
) -> list[list[dict[str, Any]]]:
    """`count` demonstrations over `items`, each in a workspace of its own (a random trace_id)."""
    rng = random.Random(seed)
    return [
        demonstration_chat(items[index % len(items)], trace_id=f"trace_{rng.getrandbits(128):032x}")
        for index in range(count)
    ]


def warm_start_workspace_model(
    directory: Any,
    *,
    items: Sequence[dict[str, Any]],
    tools: Sequence[dict[str, Any]] = FILETREE_TOOLS,
    base_dir: Any = None,
    steps: int = 200,
    batch_size: int = 8,
    seed: int = 0,
) -> Path:
    """The tiny model, with a vocabulary built on the workspace demonstrations, warm-started on them
    (`trainer.warm_start`): it then reads and writes its workspace through the tools. Cached."""
    from trainer.tiny import build_tiny_model, build_tiny_tokenizer
    from trainer.warm_start import warm_start_model

    chats = demonstration_chats(items, count=64, seed=seed)
    renderer = build_tiny_tokenizer()  # the chat template only: the texts the vocabulary must cover
    corpus = [renderer.apply_chat_template(chat, tools=list(tools), tokenize=False) for chat in chats]
    target = Path(directory)
    base = Path(base_dir) if base_dir else target.parent / f"{target.name}-base"
    build_tiny_model(base, seed=seed, extra_corpus=corpus, vocab_size=1024)
    return warm_start_model(
        target,
        base=base,
        chats=chats,
        tools=tools,
        steps=steps,
        batch_size=batch_size,
        seed=seed,
        threads=1,
    )
