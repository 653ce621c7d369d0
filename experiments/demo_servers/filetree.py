"""The demo's stateful environment: a small file tree per rollout (trace_id).

Lifecycle (HTTP, on the demo server): ``POST /env/start {"trace_id", "item", ...}`` creates the
rollout's tree from ``item.files`` (or the default project) and answers its file list as context;
``POST /env/end {"trace_id", ...}`` deletes it (repeated ends are harmless). ``GET /env/log`` lists
every start and end seen (the lifecycle's audit trail).

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

import threading
import time
from collections import OrderedDict
from typing import Any

MAX_TREES = 2_000  # live trees kept at most (a run's max_live is far below; protects the demo)
MAX_FILE_CHARS = 20_000
MAX_FILES = 200

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


class FileTrees:
    """Every live rollout's file tree, and the log of starts and ends."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._trees: OrderedDict[str, dict[str, str]] = OrderedDict()
        self.log: list[dict[str, Any]] = []
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
            "context": f"Your workspace (workspace_* tools) holds these files:\n{listing}",
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
