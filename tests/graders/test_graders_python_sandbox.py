"""Python graders run in a bubblewrap sandbox: escapes end as grader errors, the caller survives."""

import asyncio
import os
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from trainer.graders import GraderContext, SandboxLimits, build_grader, make_sample, sandbox_status

pytestmark = pytest.mark.skipif(not sandbox_status().available, reason=sandbox_status().reason)

LIMITS = SandboxLimits(timeout_s=2.0, memory_bytes=256 * 1024 * 1024, max_output_bytes=200_000)
CONTEXT = GraderContext(sandbox_limits=LIMITS)
REPOSITORY_ROOT = Path(__file__).resolve().parents[2]


async def run(source, *, output_text="hello", item=None):
    grader = build_grader({"type": "python", "name": "py", "source": source}, context=CONTEXT)
    started = time.perf_counter()
    result = await grader.grade(make_sample(output_text=output_text), item or {}, trace_id="trace_py")
    return result, time.perf_counter() - started


def only_error(result):
    assert result.score is None, f"expected a grader error, got score {result.score}"
    [error] = result.errors
    assert error["grader"] == "py"
    return error


async def test_a_grader_scores_sample_and_item():
    source = (
        "def grade(sample, item) -> float:\n"
        "    words = set(sample['output_text'].split())\n"
        "    return len(words & set(item['keywords'])) / len(item['keywords'])\n"
    )
    result, elapsed = await run(
        source, output_text="red green blue", item={"keywords": ["red", "blue", "pink", "gray"]}
    )
    assert result.score == 0.5 and result.sub_scores == {"py": 0.5} and result.errors == []
    assert elapsed < 2


async def test_graders_see_trajectory_and_output_json():
    source = (
        "def grade(sample, item):\n"
        "    assert sample['messages'][-1]['role'] == 'assistant'\n"
        "    return float(sample['output_json']['n'])\n"
    )
    result, _ = await run(source, output_text='{"n": 0.75}')
    assert result.score == 0.75


async def test_open_a_socket(tmp_path):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.settimeout(0.2)
    port = listener.getsockname()[1]
    accepted = []

    def accept():
        try:
            accepted.append(listener.accept())
        except OSError:
            pass

    thread = threading.Thread(target=accept)
    thread.start()
    source = (
        "import socket\n"
        "def grade(sample, item):\n"
        f"    socket.create_connection(('127.0.0.1', {port}), timeout=1).sendall(b'leak')\n"
        "    return 1.0\n"
    )
    try:
        result, _ = await run(source)
    finally:
        thread.join()
        listener.close()
    error = only_error(result)
    assert error["type"] == "exception" and "Connection" in error["message"]
    assert accepted == []
    outside = "import socket\ndef grade(sample, item):\n    socket.create_connection(('1.1.1.1', 53), timeout=1)\n    return 1.0\n"
    assert "unreachable" in only_error((await run(outside))[0])["message"]


async def test_read_an_env_secret(monkeypatch):
    monkeypatch.setenv("RFT_TEST_SECRET", "12345")
    direct = "import os\ndef grade(sample, item):\n    return float(os.environ['RFT_TEST_SECRET'])\n"
    error = only_error((await run(direct))[0])
    assert error["type"] == "exception" and "KeyError" in error["message"]
    # Other processes' environments (this test process, the server) are not visible either.
    scan = (
        "import os\n"
        "def grade(sample, item):\n"
        "    for pid in os.listdir('/proc'):\n"
        "        try:\n"
        "            if b'RFT_TEST_SECRET' in open(f'/proc/{pid}/environ', 'rb').read():\n"
        "                return 12345.0\n"
        "        except OSError:\n"
        "            pass\n"
        "    raise LookupError('no secret found')\n"
    )
    error = only_error((await run(scan))[0])
    assert "no secret found" in error["message"]
    files = f"def grade(sample, item):\n    return float(len(open({str(REPOSITORY_ROOT / 'pyproject.toml')!r}).read()))\n"
    assert "FileNotFoundError" in only_error((await run(files))[0])["message"]


@pytest.mark.slow
async def test_infinite_loop_is_stopped_at_the_deadline():
    result, elapsed = await run("def grade(sample, item):\n    while True:\n        pass\n")
    assert only_error(result)["type"] == "timeout"
    assert LIMITS.timeout_s <= elapsed < LIMITS.timeout_s + 1.5


async def test_allocate_4_gb():
    result, elapsed = await run(
        "def grade(sample, item):\n    block = bytearray(4 * 1024 ** 3)\n    return 1.0\n"
    )
    assert only_error(result)["type"] == "memory"
    assert elapsed < LIMITS.timeout_s


async def test_fork_bomb_is_contained():
    source = "import os\ndef grade(sample, item):\n    while True:\n        os.fork()\n"
    result, elapsed = await run(source)
    error = only_error(result)
    assert error["type"] in ("exception", "timeout")
    assert "BlockingIOError" in error["message"] or error["type"] == "timeout"
    assert elapsed < LIMITS.timeout_s + 1.5
    await asyncio.sleep(0.2)
    leftover = subprocess.run(["pgrep", "-u", "65534"], capture_output=True, text=True).stdout.split()
    assert leftover == [], f"sandboxed processes survived: {leftover}"


async def test_return_nan_and_non_numbers():
    assert (
        only_error((await run("def grade(sample, item):\n    return float('nan')\n"))[0])["type"]
        == "invalid_score"
    )
    assert (
        only_error((await run("def grade(sample, item):\n    return float('inf')\n"))[0])["type"]
        == "invalid_score"
    )
    error = only_error((await run("def grade(sample, item):\n    return '0.5'\n"))[0])
    assert error == {"grader": "py", "type": "invalid_score", "message": "grade() returned str, not a number"}
    error = only_error((await run("def grade(sample, item):\n    return 1 / 0\n"))[0])
    assert (
        error["type"] == "exception"
        and "ZeroDivisionError" in error["message"]
        and "line 2" in error["message"]
    )


async def test_print_100_mb():
    source = "import sys\ndef grade(sample, item):\n    for _ in range(100):\n        sys.stdout.write('x' * 1_000_000)\n    return 1.0\n"
    result, elapsed = await run(source)
    assert only_error(result)["type"] == "output_too_large"
    assert elapsed < LIMITS.timeout_s
    # Writing to the raw file descriptor is capped the same way.
    raw = "import os\ndef grade(sample, item):\n    for _ in range(100):\n        os.write(1, b'x' * 1_000_000)\n    return 1.0\n"
    assert only_error((await run(raw))[0])["type"] == "output_too_large"


async def test_exit_without_result_and_small_prints_are_fine():
    error = only_error((await run("import os\ndef grade(sample, item):\n    os._exit(3)\n"))[0])
    assert error["type"] == "exception" and "exit status 3" in error["message"]
    result, _ = await run(
        "def grade(sample, item):\n    print('debugging', sample['output_text'])\n    return 0.25\n"
    )
    assert result.score == 0.25


async def test_graders_run_concurrently():
    grader = build_grader(
        {
            "type": "python",
            "name": "py",
            "source": "import time\ndef grade(s, i):\n    time.sleep(0.5)\n    return 1.0\n",
        },
        context=CONTEXT,
    )
    started = time.perf_counter()
    results = await asyncio.gather(
        *(grader.grade(make_sample(output_text=""), {}, trace_id=f"t{i}") for i in range(4))
    )
    assert [r.score for r in results] == [1.0] * 4
    assert time.perf_counter() - started < 1.8


def test_the_sandbox_environment_is_empty():
    # The parent's environment holds secrets in production (DATABASE_URL, keys); none may pass.
    os.environ["RFT_TEST_CANARY"] = "1"
    try:
        source = "import os\ndef grade(sample, item):\n    return float(len([k for k in os.environ if k not in ('PATH', 'HOME', 'LANG', 'OPENBLAS_NUM_THREADS', 'OMP_NUM_THREADS', 'PWD', 'LC_CTYPE')]))\n"
        grader = build_grader({"type": "python", "name": "py", "source": source}, context=CONTEXT)
        result = asyncio.run(grader.grade(make_sample(output_text=""), {}, trace_id="t"))
    finally:
        del os.environ["RFT_TEST_CANARY"]
    assert result.score == 0.0, result.errors


@pytest.mark.slow
async def test_the_hosted_preinstalled_packages_import_in_the_sandbox():
    """What the hosted python grader preinstalls works here too (the `graders` extra)."""
    from trainer.graders import sandbox_packages

    missing = [package.name for package in sandbox_packages() if not package.version]
    assert missing == [], f"install the graders extra: pip install '.[graders]' (missing {missing})"
    source = (
        "import numpy as np, scipy.stats, sympy, pandas as pd, sklearn.metrics, deepdiff, sqlparse\n"
        "import rapidfuzz, rouge_score, jsonschema, pydantic, yaml, nltk\n"
        "def grade(sample, item) -> float:\n"
        "    predicted = [int(x) for x in sample['output_text'].split()]\n"
        "    f1 = sklearn.metrics.f1_score(item['truth'], predicted)\n"
        "    frame = pd.DataFrame({'p': predicted, 't': item['truth']})\n"
        "    agree = float((frame.p == frame.t).mean())\n"
        "    x = sympy.symbols('x')\n"
        "    exact = sympy.solve(x**2 - 4, x) == [-2, 2]\n"
        "    same = not deepdiff.DeepDiff({'a': 1}, {'a': 1})\n"
        "    rho = scipy.stats.spearmanr([1, 2, 3], [1, 2, 3]).statistic\n"
        "    return float(np.mean([f1, agree, exact, same, rho]))\n"
    )
    # Default limits except the wall clock: these imports take ~3 CPU seconds, which on this shared,
    # loaded machine can be 10+ s of wall time.
    limits = SandboxLimits(timeout_s=90.0)
    grader = build_grader(
        {"type": "python", "name": "py", "source": source}, context=GraderContext(sandbox_limits=limits)
    )
    # truth 1 0 1 1, predicted 1 0 0 1: precision 1, recall 2/3, F1 0.8; agreement 3/4
    started = time.perf_counter()
    result = await grader.grade(make_sample(output_text="1 0 0 1"), {"truth": [1, 0, 1, 1]}, trace_id="t")
    print(f"imports and grading took {time.perf_counter() - started:.1f} s (load {os.getloadavg()[0]:.1f})")
    assert result.errors == []
    assert abs(result.score - (0.8 + 0.75 + 1 + 1 + 1) / 5) < 1e-9
