"""`python -m trainer run.yaml` — train from a script, without the web app.

The file (YAML or JSON) holds:

    trainer: {model: ..., steps: 20, ...}        # TrainerConfig fields (see trainer/config.py)
    train_file: train.jsonl                      # dataset rows: {"messages": [...], "tools": [...], ...}
    eval_file: eval.jsonl                        # optional
    output_dir: runs/first                       # checkpoints, adapter, metrics.jsonl, trajectories.jsonl
    resume_from: runs/first/checkpoints/checkpoint-000010   # optional
    tools:                                       # each tool: its schema and its HTTP endpoint
      - {name: peek, description: ..., parameters: {...}, url: http://127.0.0.1:8001/peek,
         headers: {}, signing_secret: null, timeout_s: 30}
    outbound: {allow_loopback: true, allowlist: ["10.0.0.0/8", "tools.corp.example"]}   # optional
    grader:                                      # grader JSON, exactly as the web app takes it
      {type: string_check, name: exact, input: "{{sample.output_text}}", reference: "{{item.answer}}",
       operation: eq}
    grader_endpoints:                            # optional: defaults for graders that name none
      judge_base_url: http://127.0.0.1:8001/v1   #   score_model / label_model (chat completions)
      embeddings_base_url: http://127.0.0.1:8001/v1   # text_similarity with cosine
      embeddings_model: text-embedding-3-large

The tools' `server_url` (agent-RFT tool definitions) works as well as `url`. The graders are the web
app's own (`trainer.graders`: every type, same JSON, same scores), calling out under the same
`outbound` policy as the tools. Judge and embeddings API keys come from the environment only
(RFT_JUDGE_API_KEY, RFT_EMBEDDINGS_API_KEY), as do default endpoints the file does not give
(RFT_JUDGE_BASE_URL, RFT_EMBEDDINGS_BASE_URL).

Relative paths are relative to the config file. SIGINT/SIGTERM stop cleanly after the current turn
and keep a checkpoint. The result is written to stdout as one JSON line.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import signal
import sys
from pathlib import Path
from typing import Any

from trainer.config import ConfigError, TrainerConfig
from trainer.graders import GraderContext, GraderSpecError, build_grader, unmet_requirements
from trainer.outbound.tools import ToolEndpoint
from trainer.standalone import (
    JsonlReporter,
    read_jsonl,
    script_policy,
    tool_endpoint,
    tool_executor,
)

TOP_LEVEL_KEYS = {
    "trainer",
    "train_file",
    "eval_file",
    "output_dir",
    "resume_from",
    "tools",
    "grader",
    "grader_endpoints",
    "outbound",
}
GRADER_ENDPOINT_KEYS = {"judge_base_url", "embeddings_base_url", "embeddings_model"}
# The shorthand graders of earlier run files, and the grader JSON that replaces them.
LEGACY_GRADERS = {
    "exact_match": '{"type": "string_check", "name": "exact", "input": "{{sample.output_text}}", '
    '"reference": "{{item.answer}}", "operation": "eq"}',
    "contains": '{"type": "string_check", "name": "contains", "input": "{{sample.output_text}}", '
    '"reference": "{{item.answer}}", "operation": "ilike"}',
}


def load_run_file(path: Path) -> dict[str, Any]:
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".json":
        data = json.loads(text)
    else:
        import yaml

        data = yaml.safe_load(text)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the file must hold a mapping")
    unknown = sorted(set(data) - TOP_LEVEL_KEYS)
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {', '.join(unknown)}")
    for key in ("trainer", "train_file", "output_dir", "grader"):
        if key not in data:
            raise ConfigError(f"{path}: '{key}' is required")
    return data


def build_tools(specs: Any) -> tuple[list[dict[str, Any]], dict[str, ToolEndpoint]]:
    if specs is None:
        return [], {}
    if not isinstance(specs, list):
        raise ConfigError("tools: must be a list")
    schemas, endpoints = [], {}
    for index, spec in enumerate(specs):
        if isinstance(spec, dict) and "server_url" in spec and "url" not in spec:
            spec = {**spec, "url": spec["server_url"]}  # agent-RFT tool definitions name it so
            spec.pop("server_url")
        if (
            not isinstance(spec, dict)
            or not isinstance(spec.get("name"), str)
            or not isinstance(spec.get("url"), str)
        ):
            raise ConfigError(f"tools[{index}]: needs a 'name' and a 'url' (or 'server_url')")
        schemas.append(
            {
                "type": "function",
                "function": {
                    "name": spec["name"],
                    "description": spec.get("description", ""),
                    "parameters": spec.get("parameters", {"type": "object", "properties": {}}),
                },
            }
        )
        endpoints[spec["name"]] = tool_endpoint(spec, where=f"tools[{index}]")
    return schemas, endpoints


def build_run_grader(data: dict[str, Any], environ: Any = None):
    """The run file's grader JSON built by the web app's grader code (raises ConfigError)."""
    import os

    environ = os.environ if environ is None else environ
    spec = data["grader"]
    if not isinstance(spec, dict):
        raise ConfigError("grader: must be a mapping (grader JSON)")
    if spec.get("type") in LEGACY_GRADERS:
        raise ConfigError(
            f"grader: type {spec['type']!r} is gone; the trainer takes grader JSON as the web app does, "
            f"e.g. {LEGACY_GRADERS[spec['type']]}"
        )
    endpoints = data.get("grader_endpoints") or {}
    if not isinstance(endpoints, dict):
        raise ConfigError("grader_endpoints: must be a mapping")
    unknown = sorted(set(endpoints) - GRADER_ENDPOINT_KEYS)
    if unknown:
        raise ConfigError(f"grader_endpoints: unknown key(s) {', '.join(unknown)}")
    context = GraderContext(
        policy=script_policy(data.get("outbound")),
        judge_base_url=endpoints.get("judge_base_url") or environ.get("RFT_JUDGE_BASE_URL") or None,
        judge_api_key=environ.get("RFT_JUDGE_API_KEY") or None,
        embeddings_base_url=(
            endpoints.get("embeddings_base_url") or environ.get("RFT_EMBEDDINGS_BASE_URL") or None
        ),
        embeddings_api_key=environ.get("RFT_EMBEDDINGS_API_KEY") or None,
        embeddings_model=(
            endpoints.get("embeddings_model")
            or environ.get("RFT_EMBEDDINGS_MODEL")
            or "text-embedding-3-large"
        ),
    )
    try:
        grader = build_grader(spec, context=context)
    except GraderSpecError as error:
        raise ConfigError("grader: " + "; ".join(error.errors)) from error
    needs = unmet_requirements(grader)
    if needs:
        raise ConfigError("grader: cannot score: " + "; ".join(needs))
    return grader


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m trainer", description="Train a LoRA adapter with agent GRPO."
    )
    parser.add_argument("config", type=Path, help="run file (.yaml, .yml or .json)")
    parser.add_argument("--log-level", default="INFO")
    arguments = parser.parse_args(argv)
    logging.basicConfig(level=arguments.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    base = arguments.config.resolve().parent

    def resolve(value: str | None) -> str | None:
        return (
            None
            if value is None
            else str((base / value).resolve())
            if not Path(value).is_absolute()
            else value
        )

    try:
        data = load_run_file(arguments.config)
        trainer_section = dict(data["trainer"])
        model = trainer_section.get("model")
        if isinstance(model, str) and (model.startswith(".") or model.endswith(".gguf")):
            trainer_section["model"] = resolve(model)
        config = TrainerConfig.from_dict(trainer_section)
        train_items = read_jsonl(resolve(data["train_file"]))
        eval_items = read_jsonl(resolve(data["eval_file"])) if data.get("eval_file") else []
        schemas, endpoints = build_tools(data.get("tools"))
        policy = script_policy(data.get("outbound"))
        grader = build_run_grader(data)
    except (ConfigError, OSError, ValueError) as error:
        sys.stderr.write(f"error: {error}\n")
        return 2

    from trainer.loop import train  # imports torch: only once the run file is known to be valid

    output_dir = resolve(data["output_dir"])
    stop_requested = {"value": False}

    def request_stop(signum, frame):
        stop_requested["value"] = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    result = train(
        config=config,
        train_items=train_items,
        eval_items=eval_items,
        tools=schemas,
        tool_executor=tool_executor(endpoints, policy),
        grader=grader,
        reporter=JsonlReporter(output_dir),
        should_stop=lambda: stop_requested["value"],
        output_dir=output_dir,
        resume_from=resolve(data.get("resume_from")),
    )
    sys.stdout.write(json.dumps(dataclasses.asdict(result)) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
