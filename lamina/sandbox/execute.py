"""Run untrusted Python in a separate, limited process: no network, bounded time/memory/output, writes only in a temp dir."""
from __future__ import annotations

import json
import math
import os
import resource
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from lamina.errors import SandboxError

CHILD = Path(__file__).with_name("child.py")
MEMORY_EXIT = 113
MAX_OUTPUT_BYTES = 1 << 20
MAX_FILE_BYTES = 16 << 20
MAX_TEST_WORKERS = max(1, min(4, os.cpu_count() or 1))


@dataclass(slots=True)
class SandboxResult:
    returncode: int
    stdout: str
    stderr: str
    timed_out: bool
    memory_exceeded: bool
    seconds: float
    completed: bool = False  # every code part ran to its end (the child echoed this run's nonce)


@dataclass(slots=True)
class TestResult:
    __test__ = False
    test: str
    passed: bool
    error: str = ""


@dataclass(slots=True)
class TestReport:
    __test__ = False
    passed: int
    total: int
    results: list[TestResult] = field(default_factory=list)
    timed_out: bool = False

    @property
    def pass_rate(self) -> float:
        return self.passed / self.total if self.total else 0.0


def run_code(code: str, *, stdin: str = "", timeout_s: float = 5.0, memory_mb: int = 512) -> SandboxResult:
    return _run_parts([("<program>", code)], stdin, timeout_s, memory_mb)


def execute_tests(program: str, tests: list[str], *, timeout_s: float = 5.0, memory_mb: int = 512) -> TestReport:
    def one(test: str) -> TestResult:
        result = _run_parts([("<program>", program), ("<test>", test)], "", timeout_s, memory_mb)
        passed = result.completed and result.returncode == 0 and not result.timed_out
        return TestResult(test, passed, "" if passed else _error_line(result))

    with ThreadPoolExecutor(min(MAX_TEST_WORKERS, max(1, len(tests)))) as pool:
        results = list(pool.map(one, tests))
    timed_out = any(r.error.startswith("timeout") for r in results)
    return TestReport(sum(r.passed for r in results), len(tests), results, timed_out)


def _error_line(result: SandboxResult) -> str:
    if result.timed_out:
        return f"timeout after {result.seconds:.1f}s"
    if result.memory_exceeded:
        return "memory limit exceeded"
    if result.returncode == 0:
        return "" if result.completed else "program exited before the tests finished (exit code 0)"
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    return lines[-1][:500] if lines else f"exit code {result.returncode}"


def _run_parts(parts: list[tuple[str, str]], stdin: str, timeout_s: float, memory_mb: int) -> SandboxResult:
    if timeout_s <= 0 or memory_mb <= 0:
        raise SandboxError(f"sandbox limits must be positive: timeout_s={timeout_s}, memory_mb={memory_mb}")
    base = Path(tempfile.mkdtemp(prefix="lamina-sandbox-"))
    try:
        work = base / "work"
        work.mkdir()
        (base / "parts.json").write_text(json.dumps(parts), encoding="utf-8")
        return _spawn(base, work, stdin, timeout_s, memory_mb)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _spawn(base: Path, work: Path, stdin: str, timeout_s: float, memory_mb: int) -> SandboxResult:
    # The nonce reaches the child through a pipe it reads and closes before candidate code runs; the child writes
    # it to the status file only after the last part finished, so an early exit cannot look like a pass.
    nonce = secrets.token_hex(16).encode()
    nonce_r, nonce_w = os.pipe()
    try:
        os.write(nonce_w, nonce)
    finally:
        os.close(nonce_w)
    start = time.monotonic()
    try:
        with open(base / "stdout", "wb+") as out, open(base / "stderr", "wb+") as err, \
                open(base / "status", "wb+") as status:
            cmd = [*_netns_prefix(), sys.executable, "-I", "-B", str(CHILD), str(work), str(base / "parts.json"),
                   str(nonce_r), str(status.fileno())]
            try:
                proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=out, stderr=err, cwd=work,
                                        env=_child_env(work), start_new_session=True,
                                        pass_fds=(nonce_r, status.fileno()),
                                        preexec_fn=_limits(timeout_s, memory_mb))
            except OSError as exc:
                raise SandboxError(f"cannot start sandbox process {cmd[0]!r}: {exc}") from exc
            finally:
                os.close(nonce_r)
                nonce_r = -1
            timed_out = _wait(proc, stdin, timeout_s)
            seconds = time.monotonic() - start
            stdout, stderr = _read(out), _read(err)
            status.seek(0)
            completed = status.read(len(nonce) + 1) == nonce
    finally:
        if nonce_r >= 0:
            os.close(nonce_r)
    code = proc.returncode
    timed_out = timed_out or code == -signal.SIGXCPU
    memory = code == MEMORY_EXIT or "MemoryError" in stderr[-2000:]
    return SandboxResult(code, stdout, stderr, timed_out, memory, seconds, completed and code == 0 and not timed_out)


def _wait(proc: subprocess.Popen, stdin: str, timeout_s: float) -> bool:
    try:
        proc.communicate(stdin.encode(), timeout=timeout_s)
        return False
    except subprocess.TimeoutExpired:
        _kill_group(proc.pid)
        proc.wait()
        return True
    finally:
        _kill_group(proc.pid)


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _read(fh) -> str:
    fh.seek(0)
    data = fh.read(MAX_OUTPUT_BYTES + 1)
    text = data[:MAX_OUTPUT_BYTES].decode("utf-8", errors="replace")
    return text + "\n[output truncated]" if len(data) > MAX_OUTPUT_BYTES else text


def _limits(timeout_s: float, memory_mb: int):
    memory = memory_mb << 20
    cpu = math.ceil(timeout_s) + 1

    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
        resource.setrlimit(resource.RLIMIT_FSIZE, (MAX_FILE_BYTES, MAX_FILE_BYTES))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    return apply


def _child_env(work: Path) -> dict[str, str]:
    single = "1"
    return {"PATH": os.defpath, "HOME": str(work), "TMPDIR": str(work), "LANG": "C.UTF-8",
            "PYTHONIOENCODING": "utf-8", "OMP_NUM_THREADS": single, "OPENBLAS_NUM_THREADS": single,
            "MKL_NUM_THREADS": single}


@lru_cache(maxsize=1)
def _netns_prefix() -> tuple[str, ...]:
    """`unshare -n` (a private network namespace with no interfaces up) when this host permits it."""
    unshare = shutil.which("unshare")
    if not unshare:
        return ()
    for prefix in ((unshare, "-n"), (unshare, "-rn")):
        try:
            if subprocess.run([*prefix, "true"], capture_output=True, timeout=5).returncode == 0:
                return prefix
        except (OSError, subprocess.TimeoutExpired):
            continue
    return ()


def network_isolated() -> bool:
    return bool(_netns_prefix())
