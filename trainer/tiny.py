"""A tiny Qwen2-shaped model and a byte-level BPE tokenizer, built locally (no hub, no network).

Tests, the demo and the benchmarks use it. Building is deterministic and cached: `build_tiny_model`
writes into the given directory and returns at once when a complete build is already there.

The tokenizer is trained with the same normaliser (NFC) and pre-tokenizer (the Qwen split regex,
then byte-level) that transformers' `Qwen2Tokenizer` applies when `AutoTokenizer` reloads a
`model_type=qwen2` directory, so token ids survive a save and reload.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from trainer.chat import (
    CHATML_TOOLS_TEMPLATE,
    END_OF_TEXT,
    IM_END,
    IM_START,
    TOOL_CALL_CLOSE,
    TOOL_CALL_OPEN,
    TOOL_RESPONSE_CLOSE,
    TOOL_RESPONSE_OPEN,
)

logger = logging.getLogger(__name__)

# Same pattern as transformers.models.qwen2.tokenization_qwen2.PRETOKENIZE_REGEX.
QWEN_PRETOKENIZE_REGEX = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
SPECIAL_TOKENS = [END_OF_TEXT, IM_START, IM_END]
# Added as whole tokens (not special: they survive decoding with skip_special_tokens=True).
MARKUP_TOKENS = [TOOL_CALL_OPEN, TOOL_CALL_CLOSE, TOOL_RESPONSE_OPEN, TOOL_RESPONSE_CLOSE]
_COMPLETE_MARKER = ".rftweb-tiny-complete"
# Bump when anything below changes, so that cached builds are rebuilt.
TINY_BUILD_VERSION = 1

_CORPUS_SENTENCES = [
    "You are a helpful assistant.",
    "Answer with one word.",
    "Answer with one colour.",
    "What is the secret colour?",
    "The secret colour is red. The secret colour is blue. The secret colour is green or gold.",
    "red blue green gold red blue green gold",
    "Call a tool by writing",
    "Available tools:",
    "# Tools",
    '{"name": "peek", "arguments": {}}',
    '{"name": "lookup", "arguments": {"key": "a"}}',
    '{"name": "add", "arguments": {"a": 1, "b": 2}}',
    '{"name": "echo", "arguments": {"text": "hello"}}',
    '{"type": "object", "properties": {}, "required": []}',
    '{"name": "peek", "description": "Shows the secret colour.", "parameters": {"type": "object", "properties": {}}}',
    '"description": "string number integer boolean array"',
    "The quick brown fox jumps over the lazy dog.",
    "What is two plus three? Five. Seven, eight, nine, ten.",
    "Please call the tool, read the result and give the final answer.",
    "error: the tool call is not valid JSON. unknown tool.",
    "0 1 2 3 4 5 6 7 8 9 10 42 100 2026",
    "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ",
    "hello world user assistant system tool function call result output",
]


def _corpus(extra: Sequence[str] = ()) -> list[str]:
    chats = []
    for colour in ("red", "blue", "green", "gold"):
        chats.append(
            f"{IM_START}system\nAnswer with one colour.\n\n# Tools\n{IM_END}\n"
            f"{IM_START}user\nWhat is the secret colour?{IM_END}\n{IM_START}assistant\n"
            f'{TOOL_CALL_OPEN}{{"name": "peek", "arguments": {{}}}}{TOOL_CALL_CLOSE}{IM_END}\n'
            f"{IM_START}user\n{TOOL_RESPONSE_OPEN}\n{colour}\n{TOOL_RESPONSE_CLOSE}\n{IM_END}\n"
            f"{IM_START}assistant\n{colour}{IM_END}\n"
        )
    return _CORPUS_SENTENCES * 4 + chats * 4 + list(extra) * 4


def build_tiny_tokenizer(*, vocab_size: int = 640, extra_corpus: Sequence[str] = ()):
    """Trains the byte-level BPE tokenizer and wraps it as a transformers fast tokenizer.

    `extra_corpus` (texts of a task, e.g. rendered demonstration chats) joins the training text, so
    that the task's words become a few tokens each instead of one per character.
    """
    from tokenizers import (
        AddedToken,
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_corpus(extra_corpus), trainer=trainer)
    tokenizer.add_tokens([AddedToken(token, special=False, normalized=False) for token in MARKUP_TOKENS])
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token=IM_END,
        pad_token=END_OF_TEXT,
        unk_token=END_OF_TEXT,
        additional_special_tokens=[IM_START],
        chat_template=CHATML_TOOLS_TEMPLATE,
        model_max_length=4096,
        clean_up_tokenization_spaces=False,
    )


def tiny_model_config(*, vocab_size: int, eos_token_id: int, pad_token_id: int, shape: str = "tiny"):
    """A Qwen2 config: "tiny" (tests, demo) or "qwen2-0.5b" (the GPU benchmark's shape)."""
    from transformers import Qwen2Config

    if shape == "tiny":
        sizes = dict(
            hidden_size=64,
            intermediate_size=192,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            tie_word_embeddings=True,
        )
    elif shape == "qwen2-0.5b":
        sizes = dict(
            hidden_size=896,
            intermediate_size=4864,
            num_hidden_layers=24,
            num_attention_heads=14,
            num_key_value_heads=2,
            tie_word_embeddings=True,
        )
    else:
        raise ValueError(f"unknown model shape {shape!r} (tiny, qwen2-0.5b)")
    return Qwen2Config(
        vocab_size=vocab_size,
        max_position_embeddings=4096,
        rope_theta=10000.0,
        rms_norm_eps=1e-6,
        bos_token_id=None,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        **sizes,
    )


def build_tiny_model(
    directory: str | os.PathLike[str],
    *,
    seed: int = 0,
    shape: str = "tiny",
    extra_corpus: Sequence[str] = (),
    vocab_size: int = 640,
) -> Path:
    """Builds (once) a randomly initialised Qwen2-shaped model with the tiny tokenizer into `directory`.

    `extra_corpus` and `vocab_size` give a task its own vocabulary (see `build_tiny_tokenizer`).
    Safe to call from several processes: the build goes to a temporary sibling and is renamed.
    """
    import torch
    from transformers import GenerationConfig, Qwen2ForCausalLM

    target = Path(directory)
    marker = target / _COMPLETE_MARKER
    build = {"version": TINY_BUILD_VERSION, "seed": seed, "shape": shape}
    if extra_corpus or vocab_size != 640:
        digest = hashlib.sha256("\0".join(extra_corpus).encode()).hexdigest()[:16]
        build.update(vocab_size=vocab_size, corpus=digest)
    expected = json.dumps(build)
    if marker.exists() and marker.read_text() == expected:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        tokenizer = build_tiny_tokenizer(vocab_size=vocab_size, extra_corpus=extra_corpus)
        eos_id = tokenizer.convert_tokens_to_ids(IM_END)
        pad_id = tokenizer.convert_tokens_to_ids(END_OF_TEXT)
        config = tiny_model_config(
            vocab_size=len(tokenizer), eos_token_id=eos_id, pad_token_id=pad_id, shape=shape
        )
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config)
        torch.random.set_rng_state(generator_state)
        model.generation_config = GenerationConfig(eos_token_id=eos_id, pad_token_id=pad_id)
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / _COMPLETE_MARKER).write_text(expected)
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
        logger.info("built tiny %s model in %s", shape, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target
