"""The demo tool and grader server (stdlib http.server, one thread per connection)."""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections import OrderedDict
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from experiments.demo_servers.data import PRODUCTS, REPOSITORY
from experiments.demo_servers.filetree import FILETREE_TOOL_NAMES, FILETREE_TOOLS, FileTreeError, FileTrees
from trainer.graders.formula import FormulaError, parse_formula
from trainer.outbound.signing import SIGNATURE_HEADER, verify_signature
from trainer.toy import TOY_TOOLS, toy_tool_output

logger = logging.getLogger(__name__)

ROLLOUT_ID_HEADER = "X-RFT-Rollout-Id"
MAX_BODY_BYTES = 1_000_000
MAX_TRACKED_ROLLOUTS = 10_000
MAX_GREP_PATTERN_CHARS = 200
_CALCULATOR_CONSTANTS = {"pi": 3.141592653589793, "e": 2.718281828459045}
_PATH_PATTERN = re.compile(r"[A-Za-z0-9_./-]+\.(?:py|md)")


def _function(name: str, description: str, properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": description,
            "parameters": {
                "type": "object",
                "properties": properties,
                "required": required,
                "additionalProperties": False,
            },
        },
    }


TOOL_DEFINITIONS: list[dict[str, Any]] = [
    _function(
        "calculator",
        "Evaluate an arithmetic expression with + - * / ^, parentheses and min, max, abs, floor, "
        "ceil, exp, sqrt, log; pi and e are known. Returns the number.",
        {"expression": {"type": "string", "description": "e.g. 3 * 4.99 + 2 * 5.49"}},
        ["expression"],
    ),
    _function(
        "lookup",
        "Look up a product by its code (SKU-1001 .. SKU-1012). Returns its name and unit price in USD.",
        {"key": {"type": "string", "description": "a product code such as SKU-1001"}},
        ["key"],
    ),
    _function(
        "list_files",
        "List the files of the repository under a directory (recursively). Use '.' for the root.",
        {"directory": {"type": "string", "description": "e.g. src/shop"}},
        ["directory"],
    ),
    _function(
        "grep",
        "Search every file of the repository for a regular expression. Returns path:line: text.",
        {"pattern": {"type": "string", "description": "a regular expression, e.g. compute_total"}},
        ["pattern"],
    ),
    # The quick demo's toy tool (trainer/toy.py): shows the item's secret colour.
    *TOY_TOOLS,
]
TOOL_NAMES = tuple(definition["function"]["name"] for definition in TOOL_DEFINITIONS)


class ToolInputError(Exception):
    """Bad arguments: answered with a 4xx whose message the model reads."""

    def __init__(self, message: str, *, status: HTTPStatus = HTTPStatus.BAD_REQUEST) -> None:
        super().__init__(message)
        self.status = status


def format_number(value: float) -> str:
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.10g}"


def run_calculator(arguments: dict[str, Any]) -> str:
    expression = arguments.get("expression")
    if not isinstance(expression, str):
        raise ToolInputError('expected {"expression": "<arithmetic>"}')
    try:
        formula = parse_formula(expression, allowed_names=_CALCULATOR_CONSTANTS)
        return format_number(formula.evaluate(_CALCULATOR_CONSTANTS))
    except FormulaError as exc:
        raise ToolInputError(f"cannot evaluate {expression!r}: {exc}") from exc


def run_lookup(arguments: dict[str, Any]) -> str:
    key = arguments.get("key")
    if not isinstance(key, str):
        raise ToolInputError('expected {"key": "SKU-...."}')
    code = key.strip().upper()
    if code not in PRODUCTS:
        raise ToolInputError(
            f"unknown product code {key!r}; known codes are {min(PRODUCTS)} .. {max(PRODUCTS)}",
            status=HTTPStatus.NOT_FOUND,
        )
    name, price = PRODUCTS[code]
    return json.dumps({"key": code, "name": name, "price_usd": price})


def run_list_files(arguments: dict[str, Any]) -> str:
    directory = arguments.get("directory")
    if not isinstance(directory, str):
        raise ToolInputError('expected {"directory": "<path>"}')
    prefix = directory.strip().strip("/")
    if prefix in ("", "."):
        files = sorted(REPOSITORY)
    else:
        files = sorted(path for path in REPOSITORY if path.startswith(prefix + "/"))
    if not files:
        raise ToolInputError(f"no such directory: {directory!r}", status=HTTPStatus.NOT_FOUND)
    return "\n".join(files)


def run_grep(arguments: dict[str, Any]) -> str:
    pattern = arguments.get("pattern")
    if not isinstance(pattern, str) or not pattern:
        raise ToolInputError('expected {"pattern": "<regular expression>"}')
    if len(pattern) > MAX_GREP_PATTERN_CHARS:
        raise ToolInputError(f"the pattern is longer than {MAX_GREP_PATTERN_CHARS} characters")
    try:
        regex = re.compile(pattern)
    except re.error as exc:
        raise ToolInputError(f"invalid regular expression: {exc}") from exc
    matches = [
        f"{path}:{number}: {line}"
        for path in sorted(REPOSITORY)
        for number, line in enumerate(REPOSITORY[path].splitlines(), start=1)
        if regex.search(line)
    ]
    return "\n".join(matches) if matches else "no matches"


def run_peek(arguments: dict[str, Any], item: dict[str, Any]) -> str:
    if not isinstance(item, dict) or "answer" not in item:
        raise ToolInputError("peek needs the rollout's item (with its secret colour) in the request")
    _status, output = toy_tool_output(name="peek", item=item)
    return output


# Tools that read the rollout's item (sent along in the wire format) rather than only their arguments.
ITEM_TOOL_FUNCTIONS = {"peek": run_peek}
TOOL_FUNCTIONS = {
    "calculator": run_calculator,
    "lookup": run_lookup,
    "list_files": run_list_files,
    "grep": run_grep,
}


def _normalize(text: str) -> str:
    return " ".join(text.lower().split())


def grade_rollout(*, sample: dict[str, Any], item: dict[str, Any]) -> dict[str, Any]:
    """The demo grader: the answer contained in the final text, or the F1 of the named files."""
    output_text = sample.get("output_text")
    if not isinstance(output_text, str):
        raise ToolInputError("sample.output_text must be a string")
    if isinstance(item.get("reference_files"), list):
        reference = {str(path) for path in item["reference_files"]}
        named = {match for match in _PATH_PATTERN.findall(output_text) if match in REPOSITORY}
        true_positives = len(named & reference)
        precision = true_positives / len(named) if named else 0.0
        recall = true_positives / len(reference) if reference else 1.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        return {"score": f1, "precision": precision, "recall": recall}
    if "answer" in item:
        answer = _normalize(str(item["answer"]))
        return {"score": 1.0 if answer and answer in _normalize(output_text) else 0.0}
    raise ToolInputError('the item needs "answer" or "reference_files" for the demo grader')


class DemoState:
    """Per-rollout call log, keyed by X-RFT-Rollout-Id (bounded: oldest rollouts are forgotten)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rollouts: OrderedDict[str, list[dict[str, Any]]] = OrderedDict()

    def record(self, trace_id: str, call: dict[str, Any]) -> int:
        with self._lock:
            calls = self._rollouts.setdefault(trace_id, [])
            self._rollouts.move_to_end(trace_id)
            calls.append(call)
            while len(self._rollouts) > MAX_TRACKED_ROLLOUTS:
                self._rollouts.popitem(last=False)
            return len(calls)

    def calls(self, trace_id: str) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._rollouts.get(trace_id, []))


class DemoRequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: DemoHTTPServer

    def log_message(self, format: str, *args: object) -> None:
        logger.debug("demo server: " + format, *args)

    def _send_json(self, status: int, payload: Any) -> None:
        body = json.dumps(payload).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        path = self.path.split("?")[0]
        if path == "/healthz":
            self._send_json(200, {"ok": True})
        elif path == "/tools":
            self._send_json(200, TOOL_DEFINITIONS + FILETREE_TOOLS)
        elif path == "/env/log":
            self._send_json(200, {"live": self.server.trees.live(), "events": list(self.server.trees.log)})
        elif path.startswith("/rollouts/"):
            trace_id = path.removeprefix("/rollouts/")
            calls = self.server.state.calls(trace_id)
            self._send_json(200, {"trace_id": trace_id, "count": len(calls), "calls": calls})
        else:
            self._send_json(404, {"error": f"no such path {path}; see GET /tools"})

    def _read_signed_json(self) -> dict[str, Any] | None:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            self._send_json(413, {"error": "request body too large"})
            return None
        raw = self.rfile.read(length) if length else b""
        secret = self.server.signing_secret
        if secret and not verify_signature(
            secret=secret, body=raw, header=self.headers.get(SIGNATURE_HEADER)
        ):
            self._send_json(401, {"error": f"missing or invalid {SIGNATURE_HEADER}"})
            return None
        try:
            payload = json.loads(raw)
        except ValueError:
            self._send_json(400, {"error": "the body must be JSON"})
            return None
        if not isinstance(payload, dict):
            self._send_json(400, {"error": "the body must be a JSON object"})
            return None
        return payload

    def do_POST(self) -> None:
        path = self.path.split("?")[0]
        if path == "/grade":
            self._handle_grade()
        elif path in ("/env/start", "/env/end", "/env/grade"):
            self._handle_environment(path.removeprefix("/env/"))
        elif path.startswith("/tools/workspace_"):
            self._handle_workspace_tool(path.removeprefix("/tools/"))
        elif path.startswith("/tools/"):
            self._handle_tool(path.removeprefix("/tools/"))
        else:
            self._send_json(404, {"error": f"no such path {path}; tools are POST /tools/<name>"})

    def _handle_tool(self, name: str) -> None:
        if name not in TOOL_FUNCTIONS and name not in ITEM_TOOL_FUNCTIONS:
            self._send_json(404, {"error": f"unknown tool {name!r}; tools: {', '.join(TOOL_NAMES)}"})
            return
        payload = self._read_signed_json()
        if payload is None:
            return
        trace_id = self.headers.get(ROLLOUT_ID_HEADER) or str(payload.get("trace_id") or "")
        arguments_text = payload.get("arguments", "{}")
        try:
            arguments = json.loads(arguments_text) if isinstance(arguments_text, str) else arguments_text
        except ValueError:
            self._send_json(400, {"error": "arguments must be a JSON object encoded as a string"})
            return
        if not isinstance(arguments, dict):
            self._send_json(400, {"error": "arguments must be a JSON object"})
            return
        if trace_id:
            self.server.state.record(
                trace_id,
                {"tool": name, "call_id": payload.get("call_id"), "arguments": arguments, "at": time.time()},
            )
        try:
            if name in ITEM_TOOL_FUNCTIONS:
                output = ITEM_TOOL_FUNCTIONS[name](arguments, payload.get("item"))
            else:
                output = TOOL_FUNCTIONS[name](arguments)
        except ToolInputError as exc:
            self._send_json(int(exc.status), {"error": str(exc)})
            return
        self._send_json(
            200, {"type": "function_call_output", "call_id": payload.get("call_id"), "output": output}
        )

    def _handle_environment(self, action: str) -> None:
        payload = self._read_signed_json()
        if payload is None:
            return
        trace_id = str(payload.get("trace_id") or self.headers.get(ROLLOUT_ID_HEADER) or "")
        if not trace_id:
            self._send_json(400, {"error": "trace_id is required"})
            return
        item = payload.get("item") if isinstance(payload.get("item"), dict) else {}
        trees = self.server.trees
        try:
            if action == "start":
                self._send_json(200, trees.start(trace_id, item))
            elif action == "end":
                trees.end(trace_id, payload)
                self._send_json(200, {"ended": trace_id})
            else:
                self._send_json(200, trees.grade(trace_id, item))
        except FileTreeError as exc:
            self._send_json(exc.status, {"error": str(exc)})

    def _handle_workspace_tool(self, name: str) -> None:
        if name not in FILETREE_TOOL_NAMES:
            self._send_json(404, {"error": f"unknown tool {name!r}; tools: {', '.join(FILETREE_TOOL_NAMES)}"})
            return
        payload = self._read_signed_json()
        if payload is None:
            return
        trace_id = self.headers.get(ROLLOUT_ID_HEADER) or str(payload.get("trace_id") or "")
        arguments_text = payload.get("arguments", "{}")
        try:
            arguments = json.loads(arguments_text) if isinstance(arguments_text, str) else arguments_text
        except ValueError:
            self._send_json(400, {"error": "arguments must be a JSON object encoded as a string"})
            return
        if not isinstance(arguments, dict):
            self._send_json(400, {"error": "arguments must be a JSON object"})
            return
        try:
            output = self.server.trees.call(trace_id, name, arguments)
        except FileTreeError as exc:
            self._send_json(exc.status, {"error": str(exc)})
            return
        self._send_json(
            200, {"type": "function_call_output", "call_id": payload.get("call_id"), "output": output}
        )

    def _handle_grade(self) -> None:
        payload = self._read_signed_json()
        if payload is None:
            return
        sample, item = payload.get("sample"), payload.get("item")
        if not isinstance(sample, dict) or not isinstance(item, dict):
            self._send_json(400, {"error": 'expected {"sample": {...}, "item": {...}, "trace_id": "..."}'})
            return
        try:
            self._send_json(200, grade_rollout(sample=sample, item=item))
        except ToolInputError as exc:
            self._send_json(int(exc.status), {"error": str(exc)})


class DemoHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # rollouts open many connections at once

    def __init__(self, address: tuple[str, int], *, signing_secret: str | None = None) -> None:
        super().__init__(address, DemoRequestHandler)
        self.signing_secret = signing_secret
        self.state = DemoState()
        self.trees = FileTrees()


class DemoServer:
    """The demo server, started in a background thread (tests) or in the foreground (`up`)."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        signing_secret: str | None = None,
        mcp_port: int | None = None,
    ) -> None:
        """`mcp_port` (0: any free port) also serves the file-tree tools as an MCP server."""
        self.httpd = DemoHTTPServer((host, port), signing_secret=signing_secret)
        self.host = host
        self.port = int(self.httpd.server_address[1])
        self._thread: threading.Thread | None = None
        self.mcp = None
        if mcp_port is not None:
            from experiments.demo_servers.mcp_app import DemoMcpServer

            self.mcp = DemoMcpServer(self.httpd.trees, host=host, port=mcp_port)

    @property
    def mcp_url(self) -> str | None:
        return self.mcp.url if self.mcp is not None else None

    @property
    def environment_urls(self) -> tuple[str, str]:
        return f"{self.url}/env/start", f"{self.url}/env/end"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def tool_url(self, name: str) -> str:
        return f"{self.url}/tools/{name}"

    @property
    def grade_url(self) -> str:
        return f"{self.url}/grade"

    def start(self) -> DemoServer:
        if self.mcp is not None:
            self.mcp.start()
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.1}, name="demo-server", daemon=True
        )
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        if self.mcp is not None:
            self.mcp.start()
        self.httpd.serve_forever(poll_interval=0.5)

    def stop(self) -> None:
        if self.mcp is not None:
            self.mcp.stop()
        self.httpd.shutdown()
        self.httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> DemoServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
