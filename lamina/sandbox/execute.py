"""Run untrusted Python in a separate, limited process: file system isolated (see isolation.py), no network,
bounded time/memory/output, a minimal environment, writes only in a temp dir."""
from __future__ import annotations

import json
import math
import os
import resource
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from lamina.errors import SandboxError
from lamina.sandbox import isolation as iso
from lamina.sandbox.isolation import Isolation

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


def run_code(code: str, *, stdin: str = "", timeout_s: float = 5.0, memory_mb: int = 512,
             isolation: str | None = None) -> SandboxResult:
    """Run `code` once. `isolation`: auto | bwrap | landlock | none (default: $LAMINA_SANDBOX_ISOLATION, else
    auto, the strongest mechanism that works here); raises SandboxError when it cannot be had."""
    return _run_parts([("<program>", code)], stdin, timeout_s, memory_mb, _isolation_for(isolation))


def execute_tests(program: str, tests: list[str], *, timeout_s: float = 5.0, memory_mb: int = 512,
                  isolation: str | None = None) -> TestReport:
    """Run `program` then each test, one process per test; `isolation` as for `run_code`."""
    mechanism = _isolation_for(isolation)

    def one(test: str) -> TestResult:
        result = _run_parts([("<program>", program), ("<test>", test)], "", timeout_s, memory_mb, mechanism)
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


def sandbox_isolation(isolation: str | None = None) -> Isolation:
    """The isolation a run asking for `isolation` gets here (see `run_code`), probed once per process by running a
    trivial program under each mechanism in turn. Never raises for a missing mechanism: a result with
    `permitted=False` says why runs will be refused."""
    try:
        choice = iso.requested_isolation(isolation)
    except ValueError as exc:
        raise SandboxError(f"sandbox isolation: {exc}") from None
    return _probe_isolation(choice)


@lru_cache(maxsize=8)
def _probe_isolation(choice: str) -> Isolation:
    if choice == "none":
        return Isolation("none", "file system not isolated: asked for explicitly (isolation='none' or "
                                 f"{iso.ENV_VAR}=none)")
    failures = []
    for mechanism in iso.MECHANISMS if choice == "auto" else (choice,):
        why = _probe(mechanism)
        if not why:
            return Isolation(mechanism, "; ".join(failures))
        failures.append(f"{mechanism}: {why}")
    return Isolation("none", "no file system isolation works here (" + "; ".join(failures) + f"); install bubblewrap "
                     f"or set {iso.ENV_VAR}=none to run candidate code unisolated", permitted=False)


def _probe(mechanism: str) -> str:
    """Why `mechanism` cannot run a program here ("" when it can)."""
    try:
        if mechanism == "landlock" and iso.landlock_abi() < 1:
            return "the kernel has no Landlock (or it is disabled)"
        result = _run_parts([("<probe>", "print('ok')")], "", 20.0, 256, Isolation(mechanism))
    except (OSError, SandboxError, subprocess.SubprocessError) as exc:
        return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if result.completed and result.stdout == "ok\n":
        return ""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    return lines[-1][:300] if lines else f"probe exited with code {result.returncode}"


def _isolation_for(isolation: str | None) -> Isolation:
    chosen = sandbox_isolation(isolation)
    if not chosen.permitted:
        raise SandboxError(f"sandbox refused to run: {chosen.reason}")
    return chosen


def _run_parts(parts: list[tuple[str, str]], stdin: str, timeout_s: float, memory_mb: int,
               isolation: Isolation) -> SandboxResult:
    if timeout_s <= 0 or memory_mb <= 0:
        raise SandboxError(f"sandbox limits must be positive: timeout_s={timeout_s}, memory_mb={memory_mb}")
    base = Path(tempfile.mkdtemp(prefix="lamina-sandbox-"))
    try:
        work = base / "work"
        work.mkdir()
        (base / "empty").mkdir()
        (base / "parts.json").write_text(json.dumps(parts), encoding="utf-8")
        return _spawn(base, work, stdin, timeout_s, memory_mb, isolation)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _command(isolation: Isolation, base: Path, work: Path, fds: tuple[int, int], info_fd: int) -> list[str]:
    """argv of the child for `isolation`: the confining prefix, the base interpreter and child.py's arguments
    (bwrap writes the sandbox's pid to `info_fd`)."""
    rt = iso.runtime()
    parts = str(base / "parts.json")
    script = str(base / "child.py") if isolation.mechanism == "bwrap" else str(CHILD)
    child = [rt.executable, "-I", "-S", "-B", script, str(work), parts, *map(str, fds)]
    if isolation.mechanism == "bwrap":
        prefix = iso.bwrap_command(rt, child=(str(CHILD), script), parts=parts, work=str(work),
                                   empty=str(base / "empty"))
        return [*prefix, "--info-fd", str(info_fd), *child]
    if isolation.mechanism == "landlock":
        child.append(json.dumps(iso.landlock_rules(rt, str(work))))
    return [*_netns_prefix(), *child]


def _spawn(base: Path, work: Path, stdin: str, timeout_s: float, memory_mb: int,
           isolation: Isolation) -> SandboxResult:
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
                open(base / "status", "wb+") as status, open(base / "info", "wb+") as info:
            cmd = _command(isolation, base, work, (nonce_r, status.fileno()), info.fileno())
            try:
                proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=out, stderr=err, cwd=work,
                                        env=_child_env(work), start_new_session=True,
                                        pass_fds=(nonce_r, status.fileno(), info.fileno()),
                                        preexec_fn=_limits(timeout_s, memory_mb))
            except OSError as exc:
                raise SandboxError(f"cannot start sandbox process {cmd[0]!r}: {exc}") from exc
            finally:
                os.close(nonce_r)
                nonce_r = -1
            timed_out = _wait(proc, stdin, timeout_s)
            if isolation.mechanism == "bwrap":
                _await_namespace_exit(info)
            seconds = time.monotonic() - start
            stdout, stderr = _read(out), _read(err)
            status.seek(0)
            completed = status.read(len(nonce) + 1) == nonce
    finally:
        if nonce_r >= 0:
            os.close(nonce_r)
    code = proc.returncode
    if isolation.mechanism == "bwrap" and code > 128:
        code = 128 - code  # bwrap exits 128+N when the sandboxed process died of signal N
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


def _await_namespace_exit(info) -> None:
    """Return once bwrap's pid-namespace init (the `child-pid` it wrote to `info`) is dead: the kernel kills every
    process of the namespace before its init finishes exiting, so then nothing the run started is left."""
    info.seek(0)
    try:
        pid = int(json.loads(info.read(4096).decode() or "{}").get("child-pid", 0))
    except (ValueError, AttributeError):
        return
    for _ in range(200):  # 10 s at most; SIGKILL is already on its way (group kill and --die-with-parent)
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return
        if state in "ZX":
            return
        time.sleep(0.05)


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


def network_isolated(isolation: str | None = None) -> bool:
    """Whether runs get a private network namespace (bwrap always makes one; otherwise `unshare -n` when permitted)."""
    chosen = sandbox_isolation(isolation)
    return chosen.permitted and (chosen.mechanism == "bwrap" or bool(_netns_prefix()))
