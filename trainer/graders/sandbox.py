"""Runs user-written `grade(sample, item) -> float` code in a bubblewrap sandbox.

What the sandbox guarantees (each is tested by an escape test):
- a separate process in fresh PID, network, IPC and UTS namespaces: no network at all (only a
  loopback device that is down), no view of the server's processes or their /proc/*/environ;
- an empty environment (`--clearenv`): no secret of the server reaches the grader;
- a read-only file system holding only /usr, the Python installation and its virtualenv, with a
  small writable tmpfs at /tmp; the project directory (settings, .env) is not mounted;
- resource limits set inside the sandbox before any user code runs: address space (memory), CPU
  seconds, processes (fork bombs), file size and open files; when the server runs as root the
  grader also drops to uid 65534, because the kernel does not apply the process limit to root;
- a wall-clock deadline and an output cap enforced by the parent, which kills the whole sandbox.

Limits are set in the child (the runner below) rather than with `preexec_fn`, which is unsafe in
the threaded parent. Without a working bubblewrap the python grader type is disabled.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from trainer.graders.errors import GraderError

logger = logging.getLogger(__name__)

NOBODY_UID = 65534
STDERR_TAIL_CHARS = 2000

# The program the sandboxed interpreter runs. It limits itself, then runs the user's code with the
# real stdout reserved for the result (the user's prints go to stderr, which the parent caps).
_RUNNER = r"""
import json, os, resource, sys, traceback
limits = json.loads(sys.argv[1])
for name, value in limits.items():
    resource.setrlimit(getattr(resource, name), (value, value))
payload = json.loads(sys.stdin.buffer.read())
runner_pid = os.getpid()
result_stream = os.fdopen(os.dup(1), "w")
os.dup2(2, 1)
sys.stdout = sys.stderr
def report(**fields):
    if os.getpid() != runner_pid:  # a process the grader forked: only the runner reports
        os._exit(1)
    result_stream.write(json.dumps(fields))
    result_stream.flush()
    os._exit(0)
try:
    namespace = {"__name__": "grader"}
    exec(compile(payload["source"], "<grader>", "exec"), namespace)
    grade = namespace.get("grade")
    if not callable(grade):
        report(ok=False, type="exception", message="the source defines no grade(sample, item) function")
    value = grade(payload["sample"], payload["item"])
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        report(ok=False, type="invalid_score", message="grade() returned %s, not a number" % type(value).__name__)
    try:
        value = float(value)
    except OverflowError:
        report(ok=False, type="invalid_score", message="grade() returned a number too large for a float")
    report(ok=True, score=value)
except MemoryError:
    report(ok=False, type="memory", message="the grader ran out of memory")
except BaseException as exc:
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == "<grader>"]
    where = " (line %d)" % frames[-1].lineno if frames else ""
    message = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    report(ok=False, type="exception", message=message[:1000] + where)
"""


@dataclass(frozen=True)
class SandboxLimits:
    timeout_s: float = 10.0
    # Address space (RLIMIT_AS), not resident memory: importing what the hosted grader preinstalls
    # (numpy, scipy, pandas, sklearn, sympy, deepdiff 9 with cachebox, ...) reserves ~580 MB of it.
    memory_bytes: int = 1024 * 1024 * 1024
    max_output_bytes: int = 1_000_000
    max_processes: int = 4
    max_file_bytes: int = 1_000_000
    max_open_files: int = 64


@dataclass(frozen=True)
class SandboxStatus:
    available: bool
    reason: str


def _bwrap_path() -> str | None:
    return shutil.which("bwrap") or (shutil.which("bwrap", path="/usr/bin:/bin"))


def _interpreter() -> str:
    # The virtualenv's interpreter, so graders can import what the server has installed (read-only).
    return sys.executable


def _mounts() -> list[str]:
    """bwrap arguments for a read-only view of the system and the Python installation."""
    args: list[str] = ["--ro-bind", "/usr", "/usr"]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64"):
        path = Path(top)
        if path.is_symlink():
            args += ["--symlink", os.readlink(path), top]
        elif path.exists():
            args += ["--ro-bind", top, top]
    created: set[str] = {"/", "/usr", "/tmp", "/proc", "/dev"}
    python_dirs = {str(Path(sys.base_prefix).resolve()), str(Path(sys.prefix).resolve())}
    python_dirs.add(str(Path(os.path.realpath(_interpreter())).parent.parent))
    for directory in sorted(python_dirs):
        if directory.startswith("/usr/") or directory == "/usr":
            continue
        # Parents are created world-traversable: the host's may be private (e.g. /root is 0700).
        for parent in reversed(Path(directory).parents):
            text = str(parent)
            if text not in created:
                args += ["--perms", "0755", "--dir", text]
                created.add(text)
        args += ["--ro-bind", directory, directory]
        created.add(directory)
    unresolved_venv = str(Path(sys.prefix))
    if unresolved_venv not in created and not unresolved_venv.startswith("/usr"):
        for parent in reversed(Path(unresolved_venv).parents):
            if str(parent) not in created:
                args += ["--perms", "0755", "--dir", str(parent)]
                created.add(str(parent))
        args += ["--ro-bind", unresolved_venv, unresolved_venv]
    return args


def sandbox_command(*, limits: SandboxLimits) -> list[str]:
    """The full command line: bwrap, (setpriv when root), the interpreter running the runner."""
    bwrap = _bwrap_path()
    if bwrap is None:
        raise GraderError("sandbox", "bubblewrap (bwrap) is not installed")
    running_as_root = os.geteuid() == 0
    if running_as_root:
        # Root needs no user namespace to build the sandbox, and must not keep uid 0 inside it.
        namespaces = [
            "--unshare-ipc",
            "--unshare-pid",
            "--unshare-net",
            "--unshare-uts",
            "--unshare-cgroup-try",
        ]
    else:
        namespaces = ["--unshare-all", "--cap-drop", "ALL"]
    command = [
        bwrap,
        *namespaces,
        "--die-with-parent",
        "--new-session",
        # The scratch /tmp first: the Python installation may itself live under /tmp (a checkout
        # there), and its read-only binds must land on top of the tmpfs, not be hidden by it.
        "--perms",
        "1777",
        "--tmpfs",
        "/tmp",
        "--proc",
        "/proc",
        "--dev",
        "/dev",
        *_mounts(),
        "--chdir",
        "/tmp",
        "--clearenv",
        "--setenv",
        "PATH",
        "/usr/bin:/bin",
        "--setenv",
        "HOME",
        "/tmp",
        "--setenv",
        "LANG",
        "C.UTF-8",
        "--setenv",
        "OPENBLAS_NUM_THREADS",
        "1",
        "--setenv",
        "OMP_NUM_THREADS",
        "1",
        "--",
    ]
    if running_as_root:
        setpriv = shutil.which("setpriv", path="/usr/bin:/bin")
        if setpriv is None:
            raise GraderError("sandbox", "running as root needs setpriv (util-linux) to drop privileges")
        command += [
            setpriv,
            f"--reuid={NOBODY_UID}",
            f"--regid={NOBODY_UID}",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
            "--no-new-privs",
            "--",
        ]
    rlimits = {
        "RLIMIT_AS": limits.memory_bytes,
        "RLIMIT_CPU": math.ceil(limits.timeout_s) + 1,
        "RLIMIT_NPROC": limits.max_processes,
        "RLIMIT_FSIZE": limits.max_file_bytes,
        "RLIMIT_NOFILE": limits.max_open_files,
        "RLIMIT_CORE": 0,
    }
    return [*command, _interpreter(), "-I", "-B", "-c", _RUNNER, json.dumps(rlimits)]


# What the hosted python grader preinstalls: (distribution, import name). `pip install rftweb[graders]`
# (and `make up`) installs them; graders import them from the server's environment, read-only.
HOSTED_PACKAGES = (
    ("numpy", "numpy"),
    ("scipy", "scipy"),
    ("sympy", "sympy"),
    ("pandas", "pandas"),
    ("rapidfuzz", "rapidfuzz"),
    ("scikit-learn", "sklearn"),
    ("rouge-score", "rouge_score"),
    ("deepdiff", "deepdiff"),
    ("jsonschema", "jsonschema"),
    ("pydantic", "pydantic"),
    ("pyyaml", "yaml"),
    ("nltk", "nltk"),
    ("sqlparse", "sqlparse"),
)


@dataclass(frozen=True)
class SandboxPackage:
    name: str  # the distribution, as pip knows it
    module: str  # what a grader imports
    version: str | None  # None: not installed


@cache
def sandbox_packages() -> tuple[SandboxPackage, ...]:
    """The hosted list with what is installed here (the sandbox runs this interpreter's environment)."""
    import importlib.metadata
    import importlib.util

    found = []
    for name, module in HOSTED_PACKAGES:
        version = None
        if importlib.util.find_spec(module) is not None:
            try:
                version = importlib.metadata.version(name)
            except importlib.metadata.PackageNotFoundError:
                version = "installed"
        found.append(SandboxPackage(name=name, module=module, version=version))
    return tuple(found)


@cache
def sandbox_status() -> SandboxStatus:
    """Whether python graders can run here (checked once per process by starting a sandbox)."""
    if sys.platform != "linux":
        return SandboxStatus(False, "python graders need Linux with bubblewrap (bwrap)")
    if _bwrap_path() is None:
        return SandboxStatus(
            False,
            "python graders are disabled: bubblewrap (bwrap) is not installed (Debian: apt install bubblewrap)",
        )
    try:
        command = sandbox_command(limits=SandboxLimits())
    except GraderError as exc:
        return SandboxStatus(False, f"python graders are disabled: {exc.message}")
    probe = command[: command.index("-c")] + ["-c", "print(6 * 7)"]
    try:
        completed = subprocess.run(
            probe, capture_output=True, timeout=20, env={"PATH": "/usr/bin:/bin"}, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return SandboxStatus(False, f"python graders are disabled: the sandbox did not start ({exc})")
    if completed.returncode != 0 or completed.stdout.strip() != b"42":
        detail = completed.stderr.decode("utf-8", "replace").strip()[:300]
        return SandboxStatus(
            False, f"python graders are disabled: bubblewrap cannot create a sandbox here ({detail})"
        )
    return SandboxStatus(True, "bubblewrap sandbox")


def _kill_sandbox(process: asyncio.subprocess.Process) -> None:
    # bwrap leads its own process group; its death takes the PID namespace (and all inside) with it.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        process.kill()


async def run_python_grader(
    *, source: str, sample: Any, item: Any, limits: SandboxLimits = SandboxLimits()
) -> float:
    """The finite score `grade(sample, item)` returns; raises GraderError for everything else."""
    status = sandbox_status()
    if not status.available:
        raise GraderError("sandbox", status.reason)
    try:
        payload = json.dumps({"source": source, "sample": sample, "item": item}, default=str).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise GraderError("exception", f"the sample or item cannot be passed to the grader: {exc}") from exc
    process = await asyncio.create_subprocess_exec(
        *sandbox_command(limits=limits),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={"PATH": "/usr/bin:/bin"},
        start_new_session=True,
    )
    assert process.stdin is not None and process.stdout is not None and process.stderr is not None
    stdout, stderr = bytearray(), bytearray()
    budget = [limits.max_output_bytes]
    over_cap = [False]

    async def pump(stream: asyncio.StreamReader, keep: bytearray) -> None:
        # Read to EOF even past the cap (discarding): asyncio only reports the process finished once
        # its pipes are closed, and a paused pipe would never be.
        while chunk := await stream.read(65536):
            budget[0] -= len(chunk)
            if budget[0] < 0:
                if not over_cap[0]:
                    over_cap[0] = True
                    logger.debug("sandbox %s: output cap reached, killing", process.pid)
                    _kill_sandbox(process)
                continue
            keep += chunk

    async def feed() -> None:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            process.stdin.write(payload)
            await process.stdin.drain()
            process.stdin.close()

    pumps = asyncio.ensure_future(
        asyncio.gather(feed(), pump(process.stdout, stdout), pump(process.stderr, stderr))
    )
    try:
        done, _ = await asyncio.wait([pumps], timeout=limits.timeout_s)
        timed_out = not done
        if timed_out:
            logger.debug("sandbox %s: deadline reached, killing", process.pid)
            _kill_sandbox(process)
        # After a kill the pipes close at once: the whole PID namespace dies with bwrap.
        await asyncio.wait_for(pumps, timeout=5)
        await asyncio.wait_for(process.wait(), timeout=5)
    except TimeoutError:
        raise GraderError("sandbox", "the sandbox did not shut down after being killed") from None
    except BaseException:
        _kill_sandbox(process)
        raise
    if timed_out:
        raise GraderError("timeout", f"the grader did not finish within {limits.timeout_s:g} s")
    if over_cap[0]:
        raise GraderError(
            "output_too_large", f"the grader wrote more than {limits.max_output_bytes} bytes of output"
        )
    return _score_from(stdout=bytes(stdout), stderr=bytes(stderr), returncode=process.returncode)


def _score_from(*, stdout: bytes, stderr: bytes, returncode: int | None) -> float:
    tail = stderr.decode("utf-8", "replace")[-STDERR_TAIL_CHARS:].strip()
    try:
        result = json.loads(stdout) if stdout.strip() else None
    except ValueError:
        result = None
    if not isinstance(result, dict):
        if returncode is not None and returncode < 0 and -returncode == signal.SIGXCPU:
            raise GraderError("timeout", "the grader used up its CPU time")
        reason = f"the grader exited without a result (exit status {returncode})"
        if "MemoryError" in tail or "Cannot allocate memory" in tail:
            raise GraderError("memory", f"{reason}: out of memory")
        raise GraderError("exception", f"{reason}{': ' + tail[-500:] if tail else ''}")
    if not result.get("ok"):
        raise GraderError(
            str(result.get("type") or "exception"), str(result.get("message") or "the grader failed")
        )
    score = result.get("score")
    if not isinstance(score, int | float) or isinstance(score, bool) or not math.isfinite(score):
        raise GraderError("invalid_score", f"grade() returned {score!r}, which is not a finite number")
    return float(score)
