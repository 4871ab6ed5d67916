"""A hostile corpus against the sandbox, under every isolation mechanism that works on this host: each attempt fails
with its specific outcome (the secret never shows in the output, nothing is written or left running) and the test
process survives. A mechanism that does not work here is skipped with the reason, so a degraded host shows."""
from __future__ import annotations

import os
import secrets
import socket
from pathlib import Path

import pytest

from lamina.errors import SandboxError
from lamina.sandbox import execute, execute_tests, run_code, sandbox_isolation
from lamina.sandbox.isolation import MECHANISMS, runtime

REPO = Path(__file__).resolve().parents[1]
PROBE = """
import os
def attempt(what, f):
    try:
        print(what, "->", f())
    except BaseException as exc:
        print(what, "-> refused:", type(exc).__name__)
"""


@pytest.fixture(params=MECHANISMS)
def mechanism(request):
    chosen = sandbox_isolation(request.param)
    if not chosen.permitted:
        pytest.skip(f"DEGRADED: {request.param} does not work here: {chosen.reason}")
    return request.param


def _run(mechanism: str, code: str, **kwargs):
    result = run_code(PROBE + code, isolation=mechanism, **kwargs)
    return result, result.stdout + result.stderr


def _host_only_entries(folder: str) -> set[str]:
    """Entries of `folder` on the host that are no part of the runtime the sandbox exposes."""
    try:
        names = set(os.listdir(folder))
    except OSError:
        return set()
    exposed = {Path(p).relative_to(folder).parts[0] for p in runtime().read if Path(p).is_relative_to(folder)
               and Path(p) != Path(folder)}
    return names - exposed - {"tmp", "dev", "proc"}


def test_private_key_in_home_is_unreadable(mechanism, tmp_path, monkeypatch):
    key = f"-----BEGIN FAKE KEY {secrets.token_hex(8)}-----"
    (tmp_path / ".ssh").mkdir()
    (tmp_path / ".ssh" / "id_rsa").write_text(key)
    monkeypatch.setenv("HOME", str(tmp_path))
    result, out = _run(mechanism, f"attempt('abs', lambda: open({str(tmp_path / '.ssh' / 'id_rsa')!r}).read())\n"
                                  "attempt('home', lambda: open(os.path.expanduser('~/.ssh/id_rsa')).read())\n"
                                  f"attempt('list', lambda: os.listdir({str(tmp_path)!r}))")
    assert result.returncode == 0 and key not in out and ".ssh" not in out
    assert out.count("refused") == 3


def test_etc_shadow_is_unreadable(mechanism):
    result, out = _run(mechanism, "attempt('shadow', lambda: open('/etc/shadow').read())\n"
                                  "attempt('passwd', lambda: open('/etc/passwd').read())")
    assert result.returncode == 0 and out.count("refused") == 2
    assert "root:" not in out


def test_project_folder_is_unreadable(mechanism):
    readme = (REPO / "README.md").read_text().splitlines()[0]
    result, out = _run(mechanism, f"attempt('readme', lambda: open({str(REPO / 'README.md')!r}).read())\n"
                                  f"attempt('list', lambda: os.listdir({str(REPO)!r}))")
    assert result.returncode == 0 and out.count("refused") == 2
    assert readme not in out and "pyproject.toml" not in out


def test_environment_secrets_are_invisible(mechanism, monkeypatch):
    secret = f"lamina-secret-{secrets.token_hex(8)}"
    monkeypatch.setenv("LAMINA_TEST_SECRET", secret)
    code = ("import glob\nprint(dict(os.environ))\n"
            "for path in ['/proc/self/environ', '/proc/1/environ', f'/proc/{os.getppid()}/environ',"
            f" '/proc/{os.getpid()}/environ', *glob.glob('/proc/*/environ')]:\n"
            "    attempt(path, lambda: open(path, 'rb').read())\n")
    result, out = _run(mechanism, code)
    assert result.returncode == 0 and "LAMINA_TEST_SECRET" not in out and secret not in out
    assert f"/proc/{os.getpid()}/environ -> refused" in out  # this (the parent's) process environment


def test_listing_root_home_and_root_shows_no_host_folders(mechanism, tmp_path):
    sentinel = tmp_path / f"sentinel-{secrets.token_hex(6)}"
    sentinel.mkdir()
    code = "".join(f"attempt({d!r}, lambda: sorted(os.listdir({d!r})))\n"
                   for d in ("/", "/home", "/root", str(tmp_path), "/tmp"))
    result, out = _run(mechanism, code)
    assert result.returncode == 0 and sentinel.name not in out
    hidden = _host_only_entries("/") | _host_only_entries("/root") | _host_only_entries("/home")
    assert hidden and not [name for name in hidden if repr(name) in out]


def test_writes_outside_work_dir_fail(mechanism, tmp_path):
    target = tmp_path / "evil.txt"
    code = "".join(f"attempt('write {p}', lambda: open({p!r}, 'w').write('x'))\n"
                   for p in (str(target), "/evil.txt", "/usr/evil.txt", "/tmp/evil.txt"))
    result, out = _run(mechanism, code + "attempt('inside', lambda: open('ok.txt', 'w').write('ok'))")
    assert result.returncode == 0 and out.count("refused") == 4 and "inside -> 2" in out
    assert not target.exists() and not Path("/evil.txt").exists() and not Path("/tmp/evil.txt").exists()


def test_network_to_an_open_loopback_port_fails(mechanism):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    server.settimeout(0.5)
    port = server.getsockname()[1]
    try:
        result, out = _run(mechanism, "import _socket\n"
                                      f"attempt('socket', lambda: __import__('socket').create_connection(('127.0.0.1', {port}), 2))\n"
                                      f"attempt('raw', lambda: _socket.socket().connect(('127.0.0.1', {port})))")
        with pytest.raises(socket.timeout):
            server.accept()  # nobody got through
    finally:
        server.close()
    assert result.returncode == 0 and out.count("refused") == 2


@pytest.mark.parametrize("bomb", ["while True:\n    os.fork()",
                                  "import subprocess\nwhile True:\n    subprocess.Popen(['true'])",
                                  "import multiprocessing\nwhile True:\n    multiprocessing.Process(target=print).start()"])
def test_fork_bombs_are_refused(mechanism, bomb):
    result, out = _run(mechanism, bomb)
    assert result.returncode == 1 and "PermissionError" in out and not result.timed_out


def test_thread_bomb_is_bounded(mechanism):
    result, out = _run(mechanism, "import threading, time\nn = 0\nwhile True:\n"
                                  "    threading.Thread(target=time.sleep, args=(60,), daemon=True).start()\n"
                                  "    n += 1\n    print(n, flush=True)", memory_mb=256, timeout_s=10)
    assert result.returncode != 0 and not result.timed_out
    assert "can't start new thread" in out or result.memory_exceeded
    assert int(result.stdout.split()[-1]) < 1000  # the address-space limit stops it early


def test_huge_output_is_bounded_and_truncated(mechanism):
    result, _ = _run(mechanism, "import sys\nwhile True:\n    sys.stdout.write('x' * 65536)", timeout_s=10)
    assert result.returncode != 0 and not result.completed
    assert result.stdout.endswith("[output truncated]") and len(result.stdout) <= (1 << 20) + 100


def test_sleeping_children_do_not_survive(mechanism):
    marker = f"{1000 + secrets.randbelow(10**6)}.{secrets.randbelow(10**6)}"  # a unique `sleep` argument
    code = (f"import subprocess, time\nattempt('spawn', lambda: subprocess.Popen(['sleep', {marker!r}]))\n"
            f"attempt('fork', lambda: os.fork())\nprint('cwd', os.getcwd(), flush=True)\ntime.sleep(60)")
    result, out = _run(mechanism, code, timeout_s=1.0)
    assert result.timed_out and out.count("refused") == 2
    cwd = result.stdout.split("cwd ")[1].split()[0]
    assert not [pid for pid in _processes() if marker in _cmdline(pid) or cwd in _cmdline(pid)]


def test_timeout_is_a_clear_error(mechanism):
    report = execute_tests("import time\n", ["time.sleep(60)", "assert True"], timeout_s=0.5, isolation=mechanism)
    assert report.timed_out and [r.passed for r in report.results] == [False, True]
    assert report.results[0].error.startswith("timeout after")


def test_signals_to_the_parent_do_not_arrive(mechanism):
    me = os.getpid()
    code = "import signal\n" + "".join(
        f"attempt({what!r}, lambda: {call})\n" for what, call in [
            ("ppid", "os.kill(os.getppid(), signal.SIGKILL)"), ("pid", f"os.kill({me}, signal.SIGKILL)"),
            ("group", f"os.killpg(os.getpgid({me}), signal.SIGKILL)"), ("all", "os.kill(-1, signal.SIGKILL)")])
    result, out = _run(mechanism, code)
    assert os.getpid() == me and result.returncode == 0 and out.count("refused") == 4


def test_limits_apply_inside_the_isolation(mechanism):
    result, _ = _run(mechanism, "import resource as r\n"
                                "print([r.getrlimit(k)[0] for k in (r.RLIMIT_AS, r.RLIMIT_CPU, r.RLIMIT_FSIZE)])",
                     timeout_s=2.0, memory_mb=300)
    assert result.stdout.strip() == str([300 << 20, 3, 16 << 20])
    assert run_code("x = bytearray(1 << 30)", memory_mb=256, isolation=mechanism).memory_exceeded


def test_normal_candidate_with_stdlib_imports_passes(mechanism):
    program = ("import math, re, collections, itertools, functools, heapq, json, typing, dataclasses\n"
               "import decimal, fractions, hashlib, random, statistics, bisect, string, datetime\n"
               "@dataclasses.dataclass\nclass P:\n    x: int\n"
               "@functools.lru_cache(None)\ndef f(n: int) -> typing.List[int]:\n"
               "    words = re.findall(r'\\w+', 'a b a')\n"
               "    return [math.isqrt(n), collections.Counter(words)['a'], len(list(itertools.permutations(range(3)))),\n"
               "            heapq.nsmallest(1, [3, 1])[0], json.loads('[5]')[0], P(6).x,\n"
               "            int(decimal.Decimal('7')), fractions.Fraction(8, 1).numerator, len(hashlib.sha256().hexdigest())]\n")
    tests = ["assert f(16) == [4, 2, 6, 1, 5, 6, 7, 8, 64]", "assert exit and quit", "assert f(0)[0] == 1"]
    report = execute_tests(program, tests, isolation=mechanism)
    assert [r.passed for r in report.results] == [True, True, False], report.results


def test_auto_uses_a_working_mechanism_here():
    chosen = sandbox_isolation("auto")
    assert chosen.permitted and chosen.mechanism in MECHANISMS, chosen


def test_without_any_mechanism_runs_are_refused_unless_asked(monkeypatch):
    monkeypatch.setattr(execute, "_probe", lambda mechanism: f"{mechanism} broken for the test")
    execute._probe_isolation.cache_clear()
    try:
        chosen = sandbox_isolation("auto")
        assert (chosen.mechanism, chosen.permitted) == ("none", False) and "bwrap broken" in chosen.reason
        with pytest.raises(SandboxError, match="LAMINA_SANDBOX_ISOLATION=none"):
            run_code("print(1)")
        with pytest.raises(SandboxError, match="landlock broken"):
            execute_tests("x = 1", ["assert x"], isolation="landlock")
        monkeypatch.setenv("LAMINA_SANDBOX_ISOLATION", "none")
        assert run_code("print(1)").stdout == "1\n" and sandbox_isolation().mechanism == "none"
    finally:
        execute._probe_isolation.cache_clear()


def test_unknown_isolation_name_is_a_clear_error(monkeypatch):
    with pytest.raises(SandboxError, match="isolation='chroot' is not one of"):
        run_code("pass", isolation="chroot")
    monkeypatch.setenv("LAMINA_SANDBOX_ISOLATION", "docker")
    with pytest.raises(SandboxError, match="LAMINA_SANDBOX_ISOLATION='docker'"):
        run_code("pass")


def _processes() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""
