"""One run over several processes with torch.distributed: launch, setup/teardown, the few reductions.

The shape follows torchtune's distributed recipes: the process group is created and destroyed in
one visible place (`open_world` / `World.close`, called from `trainer.loop.train`), rank 0 alone
reports, and the step calls a handful of explicit collectives through `World` (sums, a gather of
the finished rollouts to rank 0, the stop flag, the LoRA gradients) so that the loop stays
readable and a single-process run pays nothing: every method is a no-op when `world_size == 1`.

Ranks are started by torch's elastic launcher (`elastic_launch`, what `torchrun` runs), one
process per device, NCCL on GPUs and gloo on CPUs. A rank that dies makes the launcher stop the
others and raise; `launch()` turns that into `RankFailed` naming the rank.
"""

from __future__ import annotations

import ctypes
import os
import signal
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainer.config import ConfigError, TrainerConfig

# Environment the elastic launcher sets in every rank (see torch.distributed.run).
_RANK_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


class RankFailed(RuntimeError):
    """A rank of a multi-device run ended with an error or a signal; the others were stopped."""

    def __init__(self, *, rank: int, pid: int | None, exitcode: int | None, detail: str):
        self.rank = rank
        self.pid = pid
        self.exitcode = exitcode
        self.detail = detail
        super().__init__(f"rank {rank} (pid {pid}) {detail}")


def gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def uses_gpu(config: TrainerConfig) -> bool:
    if config.device == "auto":
        return gpu_count() > 0
    return config.device.startswith("cuda")


def resolve_devices(config: TrainerConfig) -> int:
    """How many ranks the run gets on this machine; a clear ConfigError before anything starts."""
    gpus = gpu_count() if uses_gpu(config) else 0
    if config.devices == "auto":
        return max(1, gpus)
    devices = int(config.devices)
    if uses_gpu(config) and devices > gpus:
        raise ConfigError(f"devices: {devices} requested but this worker sees {gpus} GPU(s)")
    if devices > config.prompts_per_step:
        raise ConfigError(
            f"devices: {devices} ranks need at least as many prompts per step (prompts_per_step is "
            f"{config.prompts_per_step}): a prompt group is never split between ranks"
        )
    if config.sharding == "fsdp" and devices < 2:
        raise ConfigError("sharding: fsdp shards the base over several devices; set devices to 2 or more")
    return devices


@dataclass
class World:
    """This process's place in the run; `World()` is the single-process run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    group: Any = None  # the torch.distributed process group when world_size > 1
    # Seconds spent inside collectives (transfer plus waiting for the slower ranks) since `take_
    # communication_s()` last read it: the run page's communication time per step.
    communication_s: float = field(default=0.0)

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_rank_zero(self) -> bool:
        return self.rank == 0

    def take_communication_s(self) -> float:
        value, self.communication_s = self.communication_s, 0.0
        return value

    def _timed(self, operation: Callable[[], Any]) -> Any:
        started = time.perf_counter()
        try:
            return operation()
        finally:
            self.communication_s += time.perf_counter() - started

    def _device(self) -> Any:
        import torch
        import torch.distributed as dist

        return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"

    def sum(self, values: Sequence[float]) -> list[float]:
        """Element-wise sum over ranks, in float64 (counts and sums of rewards, losses, tokens)."""
        if not self.is_distributed:
            return [float(v) for v in values]
        import torch
        import torch.distributed as dist

        tensor = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self._device())
        self._timed(lambda: dist.all_reduce(tensor, op=dist.ReduceOp.SUM))
        return tensor.cpu().tolist()

    def max(self, values: Sequence[float]) -> list[float]:
        if not self.is_distributed:
            return [float(v) for v in values]
        import torch
        import torch.distributed as dist

        tensor = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self._device())
        self._timed(lambda: dist.all_reduce(tensor, op=dist.ReduceOp.MAX))
        return tensor.cpu().tolist()

    def gather_to_rank_zero(self, value: Any) -> list[Any] | None:
        """Every rank's `value` (picklable) in rank order on rank 0; None on the other ranks."""
        if not self.is_distributed:
            return [value]
        import torch.distributed as dist

        gathered: list[Any] | None = [None] * self.world_size if self.is_rank_zero else None
        self._timed(lambda: dist.gather_object(value, gathered, dst=0))
        return gathered

    def rank_zero_decides(self, flag: bool) -> bool:
        """Rank 0's `flag` on every rank (the stop request: one rank must never stop alone)."""
        if not self.is_distributed:
            return flag
        import torch
        import torch.distributed as dist

        tensor = torch.tensor(
            [1 if flag and self.is_rank_zero else 0], dtype=torch.int32, device=self._device()
        )
        self._timed(lambda: dist.broadcast(tensor, src=0))
        return bool(tensor.item())

    def sum_gradients(self, parameters: Iterable[Any]) -> None:
        """Adds up the trainable parameters' gradients over ranks, in one flat all-reduce.

        Each rank's loss is already divided by the whole batch's counts (see update.py), so the sum
        is the gradient of the whole batch. One bucket after all micro-batches, rather than DDP's
        per-backward hooks, because ranks may run different numbers of micro-batches (a rank whose
        rollouts were all excluded by grader errors runs none) and LoRA gradients are small.
        """
        if not self.is_distributed:
            return
        import torch
        import torch.distributed as dist

        with_grad = [p for p in parameters if p.requires_grad]
        for parameter in with_grad:
            if parameter.grad is None:
                parameter.grad = torch.zeros_like(parameter)
        flat = torch.cat([p.grad.reshape(-1) for p in with_grad])
        self._timed(lambda: dist.all_reduce(flat, op=dist.ReduceOp.SUM))
        offset = 0
        for parameter in with_grad:
            count = parameter.grad.numel()
            parameter.grad.copy_(flat[offset : offset + count].view_as(parameter.grad))
            offset += count

    def barrier(self) -> None:
        if self.is_distributed:
            import torch.distributed as dist

            self._timed(dist.barrier)

    def broadcast_object(self, value: Any) -> Any:
        """Rank 0's `value` on every rank."""
        if not self.is_distributed:
            return value
        import torch.distributed as dist

        holder = [value if self.is_rank_zero else None]
        self._timed(lambda: dist.broadcast_object_list(holder, src=0))
        return holder[0]

    def close(self) -> None:
        if self.is_distributed:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


def launched_world_size() -> int:
    """WORLD_SIZE as set by the elastic launcher; 1 when this process was not launched as a rank."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def open_world(config: TrainerConfig) -> tuple[World, TrainerConfig]:
    """Joins the process group when this process is a rank of a multi-device run.

    Returns the World and the config with `device` pinned to this rank's GPU (cuda:LOCAL_RANK).
    """
    import dataclasses

    import torch
    import torch.distributed as dist

    world_size = launched_world_size()
    if world_size == 1:
        return World(), config
    if not all(name in os.environ for name in _RANK_VARS):
        raise RuntimeError("WORLD_SIZE is set but this process was not started by the elastic launcher")
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    if uses_gpu(config):
        torch.cuda.set_device(local_rank)
        config = dataclasses.replace(config, device=f"cuda:{local_rank}")
        backend = "nccl"
    else:
        config = dataclasses.replace(config, device="cpu")
        # N ranks share the CPU's cores; more threads than cores each only thrash.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))
        backend = "gloo"
    dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
    return World(rank=rank, world_size=world_size, local_rank=local_rank, group=dist.group.WORLD), config


# --- starting the ranks --------------------------------------------------------------------------
#
# Ranks are started as `python -m trainer.distributed <job dir>` commands through elastic_launch
# (an argv list, no shell), not as multiprocessing children: a Celery prefork worker's pool process
# is daemonic, and Python forbids daemonic processes to have multiprocessing children. The job
# directory carries the pickled call in and each rank's pickled return value out.

_JOB_FILE = "job.pkl"


def _die_with_parent(parent_pid: int) -> None:
    """Linux: the kernel kills this rank when the process that launched it dies (no orphans, even
    after a SIGKILL of the worker, which gives the launcher no chance to clean up)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
    except OSError:
        return
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


def _rank_main(job_dir: str) -> None:
    """What `python -m trainer.distributed JOB_DIR` runs in each rank."""
    import importlib
    import pickle
    import sys

    from torch.distributed.elastic.multiprocessing.errors import record

    job = pickle.loads((Path(job_dir) / _JOB_FILE).read_bytes())
    _die_with_parent(job["parent_pid"])
    for entry in reversed(job["sys_path"]):  # the launcher's imports resolve the same way here
        if entry not in sys.path:
            sys.path.insert(0, entry)
    module_name, _, function_name = job["entrypoint"].partition(":")
    function = getattr(importlib.import_module(module_name), function_name)

    @record
    def main() -> None:
        value = function(*job["args"])
        target = Path(job_dir) / f"result-rank{os.environ.get('RANK', '0')}.pkl"
        staging = target.with_suffix(".tmp")
        staging.write_bytes(pickle.dumps(value))
        os.replace(staging, target)

    main()


def launch(
    entrypoint: Callable[..., Any],
    args: Sequence[Any],
    *,
    nprocs: int,
    log_dir: str | os.PathLike[str],
    run_id: str | None = None,
) -> dict[int, Any]:
    """Runs `entrypoint(*args)` in `nprocs` new processes (ranks 0..n-1) on this host and returns
    {rank: return value}. `entrypoint` must be a module-level function (ranks import it by name);
    `args` and the return values must pickle. Raises RankFailed naming the first rank that failed;
    the launcher has stopped the other ranks by then.
    """
    import pickle
    import shutil
    import sys

    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    module = entrypoint.__module__
    if module == "__main__":  # a script's function: ranks import the script by its name
        module = Path(sys.modules["__main__"].__file__).stem
    job_dir = Path(log_dir) / "job"
    shutil.rmtree(job_dir, ignore_errors=True)
    job_dir.mkdir(parents=True)
    (job_dir / _JOB_FILE).write_bytes(
        pickle.dumps(
            {
                "entrypoint": f"{module}:{entrypoint.__qualname__}",
                "args": tuple(args),
                "parent_pid": os.getpid(),
                "sys_path": [entry or os.getcwd() for entry in sys.path],
            }
        )
    )
    launch_config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nprocs,
        run_id=run_id or uuid.uuid4().hex,
        rdzv_backend="c10d",
        rdzv_endpoint="127.0.0.1:0",  # a free port on this host; see docs/multi-host.md for several
        max_restarts=0,  # a failed rank ends the attempt; the run resumes from its checkpoint
        monitor_interval=0.5,
        logs_specs=DefaultLogsSpecs(log_dir=str(Path(log_dir) / "elastic")),
    )
    try:
        elastic_launch(launch_config, sys.executable)("-m", "trainer.distributed", str(job_dir))
    except ChildFailedError as error:
        # The launcher stops the surviving ranks with SIGTERM once one fails, and under load its monitor
        # can record those stops first: the culprit is the first failure that is not such a stop.
        failures = error.failures
        culprits = {
            r: f
            for r, f in failures.items()
            if not (f.exitcode is not None and f.exitcode == -signal.SIGTERM)
        }
        rank, failure = min((culprits or failures).items(), key=lambda item: (item[1].timestamp, item[0]))
        if failure.exitcode is not None and failure.exitcode < 0:
            detail = f"was killed by {failure.signal_name()}"
        else:
            message = failure.message
            if isinstance(message, dict):
                message = message.get("message", message)
            detail = f"exited with code {failure.exitcode}: {str(message).strip()[-4000:]}"
        raise RankFailed(rank=rank, pid=failure.pid, exitcode=failure.exitcode, detail=detail) from error
    return {rank: pickle.loads((job_dir / f"result-rank{rank}.pkl").read_bytes()) for rank in range(nprocs)}


# --- FSDP --------------------------------------------------------------------------------------


def shard_model(model: Any, world: World) -> None:
    """FSDP2: each decoder layer and the rest of the model sharded over the ranks.

    LoRA weights are sharded with the frozen base they sit in. FSDP reduce-scatters gradients as
    a mean over ranks; update.py multiplies them back to the sum (each rank's loss is already
    divided by the whole batch's counts). (FSDP's own divide factor would need PREMUL_SUM, which
    gloo lacks.)
    """
    from torch.distributed.fsdp import fully_shard

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    layers = getattr(base.get_decoder(), "layers", None)
    if layers is None:
        raise ConfigError("sharding: fsdp needs a decoder with a `layers` list (a standard causal LM)")
    for layer in layers:
        fully_shard(layer)
    fully_shard(model)
    model._rftweb_fsdp = True


class full_weights_for_generation:
    """Under FSDP every forward is a collective, but each rank samples its own rollouts (different
    lengths, turns, tool waits): ranks cannot run forwards in lockstep. So the weights are gathered
    once before the rollouts and kept whole until they end (no collectives while sampling), then
    sharded again for the update. A no-op for a model that is not sharded."""

    def __init__(self, model: Any, world: World):
        self.model = model
        self.world = world
        self.modules = [m for m in model.modules() if hasattr(m, "unshard") and hasattr(m, "reshard")]
        self.active = bool(getattr(model, "_rftweb_fsdp", False)) and bool(self.modules)

    def __enter__(self) -> None:
        if not self.active:
            return
        started = time.perf_counter()
        for module in self.modules:
            module.set_reshard_after_forward(False, recurse=False)
            module.unshard()
        self.world.communication_s += time.perf_counter() - started

    def __exit__(self, *exc: Any) -> None:
        if not self.active:
            return
        for module in self.modules:
            module.reshard()
            module.set_reshard_after_forward(True, recurse=False)


if __name__ == "__main__":
    import sys

    _rank_main(sys.argv[1])
