"""Step time of our GRPO step against TRL's GRPOTrainer, same model, prompts, group size, batch and
completion length, single-turn without tools, both in this one process run.

    .venv/bin/python bench/bench_trainer_step.py                      # tiny model, CPU
    .venv/bin/python bench/bench_trainer_step.py --device cuda --model-shape qwen2-0.5b --dtype bfloat16
    .venv/bin/python bench/bench_trainer_step.py --devices 2             # 2 ranks against 1, CPU

Prints the median step time of each (the first step is a warm-up and not counted), their ratio
(ours / TRL's; goal <= 1), and the generated tokens per second. Needs `trl` (the `bench` extra).
The qwen2-0.5b shape is randomly initialised with the tiny tokenizer's small vocabulary.

With `--devices N` (N > 1) it compares our step on N ranks (torch.distributed, gloo on the CPU,
NCCL on GPUs) against 1 rank with the same global batch, alternating 1-rank and N-rank runs
`--repeats` times, and prints the per-rank and total tokens/s and the step-time ratio (N / 1).
On a machine with fewer cores than ranks no speed-up is possible: the ratio shows the overhead of
the process group, the split and the gathers (goal <= 1.15).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

PROMPTS = [
    "What is the secret colour?",
    "Please call the tool, read the result and give the final answer.",
    "The quick brown fox jumps over the lazy dog.",
    "What is two plus three?",
    "hello world",
    "Answer with one word.",
    "error: the tool call is not valid JSON.",
    "0 1 2 3 4 5 6 7 8 9",
]


def reward_of(text: str) -> float:
    """Any deterministic function of the completion will do: the benchmark measures speed."""
    return (sum(text.count(v) for v in "aeiou") % 5) / 4


class NullReporter:
    def __init__(self) -> None:
        self.steps: list[dict[str, float]] = []

    def report_step(self, step, metrics, trajectories):
        self.steps.append(dict(metrics))

    def report_checkpoint(self, step, path, metrics):
        pass

    def log(self, level, message):
        pass


class VowelGrader:
    async def grade(self, sample, item, *, trace_id):
        from trainer.interfaces import GradeResult

        await asyncio.sleep(0)
        return GradeResult(score=reward_of(sample["output_text"]))


class NoTools:
    async def execute(self, calls, *, item, trace_id):
        raise AssertionError("single-turn benchmark: no tool calls expected")


def ours_config(*, model_dir: Path, args, devices: int = 1):
    from trainer import TrainerConfig

    return TrainerConfig(
        model=str(model_dir),
        devices=devices,
        device=args.device,
        dtype=args.dtype,
        steps=args.steps,
        prompts_per_step=args.prompts,
        group_size=args.group_size,
        micro_batch_size=args.prompts * args.group_size,
        max_turns=1,
        max_new_tokens_per_turn=args.max_tokens,
        max_tokens_per_rollout=args.max_tokens,
        learning_rate=1e-5,
        kl_beta=0.0,
        loss_type="dapo",
        lora_r=16,
        lora_alpha=32,
        checkpoint_interval=10_000,
        seed=0,
    )


def train_ours(config, output_dir: str) -> list[dict[str, float]]:
    """One run of our trainer (in every rank when config.devices > 1); the step metrics on rank 0."""
    from trainer import train

    items = [{"messages": [{"role": "user", "content": p}]} for p in PROMPTS]
    reporter = NullReporter()
    train(
        config=config,
        train_items=items,
        eval_items=[],
        tools=[],
        tool_executor=NoTools(),
        grader=VowelGrader(),
        reporter=reporter,
        output_dir=output_dir,
    )
    return reporter.steps


def run_ours(*, model_dir: Path, args, output_dir: str) -> tuple[list[float], float]:
    reporter = NullReporter()
    reporter.steps = train_ours(ours_config(model_dir=model_dir, args=args), output_dir)
    times = [m["step_time"] for m in reporter.steps]
    print(
        "ours, per step: "
        + "; ".join(
            f"rollout {m['timing/rollout_s']:.2f} s + update {m['timing/update_s']:.2f} s"
            for m in reporter.steps
        )
    )
    tokens = [m["completions/mean_length"] * args.prompts * args.group_size for m in reporter.steps]
    return times, statistics.median(t / s for t, s in zip(tokens[1:], times[1:], strict=True))


def run_trl(*, model_dir: Path, args, output_dir: str) -> tuple[list[float], float]:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    step_times: list[float] = []
    step_tokens: list[int] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, *_, **__):
            self.started = time.perf_counter()

        def on_step_end(self, *_, **__):
            step_times.append(time.perf_counter() - self.started)

    def reward(completions, **kwargs):
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        step_tokens.append(sum(len(tokenizer.encode(t, add_special_tokens=False)) + 1 for t in texts))
        return [reward_of(t) for t in texts]

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    dtype = {"auto": None, "float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype or torch.float32)
    batch = args.prompts * args.group_size
    config = GRPOConfig(
        output_dir=output_dir,
        max_steps=args.steps,
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=1,
        num_generations=args.group_size,
        max_completion_length=args.max_tokens,
        temperature=1.0,
        top_p=1.0,
        beta=0.0,
        loss_type="dapo",
        learning_rate=1e-5,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        gradient_checkpointing=False,
        bf16=args.dtype == "bfloat16",
        use_cpu=args.device == "cpu",
        seed=0,
        disable_tqdm=True,
    )
    dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": p}]} for p in PROMPTS * 64])
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=reward,
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=LoraConfig(
            r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM"
        ),
        callbacks=[Timer()],
    )
    from transformers import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # it prints every step's log dict
    trainer.train()
    return step_times, statistics.median(t / s for t, s in zip(step_tokens[1:], step_times[1:], strict=True))


def run_devices(*, model_dir: Path, args, scratch: str) -> None:
    """1 rank and N ranks alternating, the same global batch; per-rank and total tokens/s."""
    from trainer.distributed import launch

    medians: dict[int, list[float]] = {1: [], args.devices: []}
    for repeat in range(args.repeats):
        for devices in (1, args.devices):
            config = ours_config(model_dir=model_dir, args=args, devices=devices)
            output_dir = f"{scratch}/devices-{devices}-{repeat}"
            if devices == 1:
                steps = train_ours(config, output_dir)
            else:
                steps = launch(
                    train_ours, [config, output_dir], nprocs=devices, log_dir=f"{output_dir}-ranks"
                )[0]
            after_warm_up = steps[1:]
            step_time = statistics.median(m["step_time"] for m in after_warm_up)
            medians[devices].append(step_time)
            generated = statistics.median(
                m["completions/mean_length"] * args.prompts * args.group_size / m["step_time"]
                for m in after_warm_up
            )
            times = ", ".join(f"{m['step_time']:.2f}" for m in steps)
            line = (
                f"run {repeat + 1}, {devices} rank(s): step times {times} s; "
                f"median after warm-up {step_time:.3f} s; total {generated:.0f} generated tokens per step-second"
            )
            if devices > 1:
                per_rank = [
                    statistics.median(m[f"tokens_per_s/rank{rank}"] for m in after_warm_up)
                    for rank in range(devices)
                ]
                parts = [
                    f"rollout {statistics.median(m[f'timing/rank{rank}/rollout_s'] for m in after_warm_up):.2f} s, "
                    f"update {statistics.median(m[f'timing/rank{rank}/update_s'] for m in after_warm_up):.2f} s"
                    for rank in range(devices)
                ]
                communication = statistics.median(m["timing/communication_s"] for m in after_warm_up)
                line += (
                    "; per rank generation tokens/s "
                    + ", ".join(f"rank {rank} {value:.0f}" for rank, value in enumerate(per_rank))
                    + "; "
                    + "; ".join(f"rank {rank}: {part}" for rank, part in enumerate(parts))
                    + f"; communication (rank 0, waiting included) {communication:.3f} s"
                )
            print(line + f"; load average {os.getloadavg()[0]:.2f}", flush=True)
    one, many = statistics.median(medians[1]), statistics.median(medians[args.devices])
    print(
        f"step time {args.devices} ranks / 1 rank = {many / one:.2f} (median of {args.repeats} runs each; "
        f"goal <= 1.15 with {os.cpu_count()} CPUs); load average {os.getloadavg()[0]:.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model-shape", default="tiny", choices=["tiny", "qwen2-0.5b"])
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument(
        "--threads", type=int, default=0, help="torch intra-op threads on CPU (0: torch's default)"
    )
    parser.add_argument("--only", choices=["ours", "trl"], default=None)
    parser.add_argument("--devices", type=int, default=1, help="N > 1: our step on N ranks against 1 rank")
    parser.add_argument("--repeats", type=int, default=2, help="with --devices: alternating runs of each")
    args = parser.parse_args()

    import torch

    from trainer.tiny import build_tiny_model

    if args.threads:
        torch.set_num_threads(args.threads)
    cache = Path(os.environ.get("RFTWEB_BENCH_CACHE", Path(tempfile.gettempdir()) / "rftweb-bench-models"))
    model_dir = build_tiny_model(cache / args.model_shape, shape=args.model_shape)
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or "cpu"
    print(
        f"machine: {device}; {os.cpu_count()} CPUs visible, torch threads {torch.get_num_threads()}, "
        f"load average {os.getloadavg()[0]:.2f}; model {args.model_shape} ({args.dtype}); "
        f"{args.prompts} prompts x {args.group_size} samples, {args.max_tokens} new tokens, single turn"
    )
    results = {}
    if args.devices > 1:
        with tempfile.TemporaryDirectory() as scratch:
            run_devices(model_dir=model_dir, args=args, scratch=scratch)
        return
    with tempfile.TemporaryDirectory() as scratch:
        if args.only in (None, "ours"):
            results["ours"] = run_ours(model_dir=model_dir, args=args, output_dir=f"{scratch}/ours")
        if args.only in (None, "trl"):
            results["trl"] = run_trl(model_dir=model_dir, args=args, output_dir=f"{scratch}/trl")
    for name, (times, tokens_per_s) in results.items():
        print(
            f"{name:>4}: step times {', '.join(f'{t:.2f}' for t in times)} s; "
            f"median after warm-up {statistics.median(times[1:]):.3f} s; {tokens_per_s:.0f} generated tokens/s"
        )
    if len(results) == 2:
        ours, trl = (statistics.median(results[k][0][1:]) for k in ("ours", "trl"))
        print(f"ratio ours / TRL = {ours / trl:.2f} (goal <= 1)")


if __name__ == "__main__":
    main()
