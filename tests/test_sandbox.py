"""The code sandbox: limits, isolation and per-test pass counts, on real subprocesses."""
from __future__ import annotations

import socket
import threading
import time

import pytest

from lamina.errors import SandboxError
from lamina.sandbox import execute_tests, network_isolated, run_code


def test_runs_code_with_stdin_and_captures_output():
    result = run_code("import sys\nprint(input()[::-1])\nprint('oops', file=sys.stderr)", stdin="abc\n")
    assert (result.returncode, result.stdout, result.stderr.strip()) == (0, "cba\n", "oops")
    assert not result.timed_out and not result.memory_exceeded


def test_nonzero_exit_and_exception_are_reported():
    assert run_code("raise SystemExit(3)").returncode == 3
    result = run_code("1/0")
    assert result.returncode == 1 and "ZeroDivisionError" in result.stderr


def test_infinite_loop_is_killed_within_timeout():
    start = time.monotonic()
    result = run_code("while True:\n    pass", timeout_s=1.0)
    assert result.timed_out and result.returncode != 0
    assert time.monotonic() - start < 3.0


def test_sleeping_child_group_is_killed():
    start = time.monotonic()
    result = run_code("import time\ntime.sleep(30)", timeout_s=0.5)
    assert result.timed_out and time.monotonic() - start < 3.0


def test_memory_bomb_is_stopped():
    result = run_code("x = bytearray(4 * 1024**3)\nprint('allocated')", memory_mb=256)
    assert result.memory_exceeded and result.returncode != 0 and "allocated" not in result.stdout
    growing = run_code("xs = []\nwhile True:\n    xs.append(' ' * 10**7)", memory_mb=256, timeout_s=10)
    assert growing.memory_exceeded and not growing.timed_out


def test_output_is_truncated():
    result = run_code("print('x' * (3 << 20))")
    assert result.stdout.endswith("[output truncated]") and len(result.stdout) < (2 << 20)


@pytest.fixture()
def listening_port():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(3)
    accepted = []
    thread = threading.Thread(target=lambda: _accept(server, accepted), daemon=True)
    thread.start()
    yield server.getsockname()[1], accepted
    server.close()


def _accept(server, accepted):
    try:
        accepted.append(server.accept())
    except OSError:
        pass


def test_network_connection_to_open_local_port_fails(listening_port):
    port, accepted = listening_port
    probe = socket.create_connection(("127.0.0.1", port), timeout=2)  # the port really is open here
    probe.close()
    accepted.clear()
    code = f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=2)\nprint('connected')"
    result = run_code(code)
    assert result.returncode != 0 and "connected" not in result.stdout
    assert "PermissionError" in result.stderr
    raw = run_code(f"import _socket\ns = _socket.socket()\ns.connect(('127.0.0.1', {port}))\nprint('connected')")
    assert raw.returncode != 0 and "connected" not in raw.stdout


def test_network_namespace_is_used_when_available():
    if not network_isolated():
        pytest.skip("unshare -n not permitted on this host")
    assert run_code("import socket\nprint(socket.if_nameindex())").stdout.strip() == "[(1, 'lo')]"


def test_writes_outside_temp_dir_are_refused(tmp_path_factory):
    outside = tmp_path_factory.mktemp("outside")
    target, victim = outside / "evil.txt", outside / "victim.txt"
    victim.write_text("keep")
    attempts = [
        f"open({str(target)!r}, 'w').write('x')",
        f"import os\nos.close(os.open({str(target)!r}, os.O_WRONLY | os.O_CREAT))",
        f"import os\nos.remove({str(victim)!r})",
        f"import os\nos.rename({str(victim)!r}, 'stolen.txt')",
        f"import pathlib\npathlib.Path({str(target)!r}).write_text('x')",
        f"import os\nos.chdir({str(outside)!r})\nopen('evil.txt', 'w').write('x')",
        "import subprocess\nsubprocess.run(['touch', " + repr(str(target)) + "])",
    ]
    for code in attempts:
        result = run_code(code)
        # the audit hook refuses (PermissionError) or, under bwrap, the folder is not in the sandbox at all
        assert result.returncode != 0 and _refused(result.stderr), code
    assert not target.exists() and victim.read_text() == "keep"


def _refused(stderr: str) -> bool:
    return "PermissionError" in stderr or "FileNotFoundError" in stderr


def test_writes_inside_temp_dir_work_and_dir_is_removed():
    result = run_code("import os\nopen('a.txt', 'w').write('hi')\nprint(open('a.txt').read())\nprint(os.getcwd())")
    text, cwd = result.stdout.split()
    assert result.returncode == 0 and text == "hi"
    import os
    assert not os.path.exists(cwd)


def test_execute_tests_counts_passes():
    program = "def double(x):\n    return 2 * x\n"
    tests = ["assert double(2) == 4", "assert double(0) == 0", "assert double(3) == 7"]
    report = execute_tests(program, tests)
    assert (report.passed, report.total) == (2, 3) and report.pass_rate == pytest.approx(2 / 3)
    assert [r.passed for r in report.results] == [True, True, False]
    assert "AssertionError" in report.results[2].error and not report.timed_out
    wrong = execute_tests("def double(x):\n    return x + 1\n", tests)
    assert wrong.passed == 0


def test_syntax_error_is_reported_per_test():
    report = execute_tests("def double(x) return 2 * x", ["assert double(1) == 2", "assert double(2) == 4"])
    assert (report.passed, report.total) == (0, 2)
    assert all("SyntaxError" in r.error for r in report.results)


def test_looping_test_times_out_others_still_pass():
    program = "def f(x):\n    while x < 0:\n        pass\n    return x\n"
    report = execute_tests(program, ["assert f(1) == 1", "assert f(-1) == -1"], timeout_s=1.0)
    assert report.passed == 1 and report.timed_out and report.results[1].error.startswith("timeout")


def test_bad_limits_raise_sandbox_error():
    with pytest.raises(SandboxError, match="timeout_s"):
        run_code("pass", timeout_s=0)


@pytest.mark.parametrize("exit_code", ["import sys\nsys.exit(0)", "exit()", "quit()", "raise SystemExit",
                                       "import os\nos._exit(0)"])
def test_program_that_exits_early_fails_its_tests(exit_code):
    report = execute_tests("def f():\n    return 1\n" + exit_code + "\n", ["assert f() == 1", "assert False"])
    assert report.passed == 0 and report.pass_rate == 0.0
    assert all("exited before the tests" in r.error for r in report.results)


def test_test_that_exits_early_fails():
    report = execute_tests("def f():\n    return 1\n", ["assert f() == 1", "import sys\nsys.exit(0)\nassert False",
                                                       "import os\nos._exit(0)"])
    assert [r.passed for r in report.results] == [True, False, False]
    assert "test exited before finishing" in report.results[1].error
    assert "exited before the tests finished" in report.results[2].error


def test_printed_output_cannot_fake_completion():
    program = "import sys\nprint('x' * 100)\nprint('ok', file=sys.stderr)\nsys.stdout.flush()\nimport os\nos._exit(0)"
    assert execute_tests(program, ["pass"]).passed == 0
    assert run_code("print(1)").completed and not run_code("import os\nos._exit(0)").completed


def test_ctypes_cannot_write_outside_temp_dir(tmp_path_factory):
    target = tmp_path_factory.mktemp("outside") / "ctypes.txt"
    libc_write = (f"import ctypes\nlibc = ctypes.CDLL(None)\nfd = libc.open({str(target).encode()!r}, 0o101, 0o644)\n"
                  "libc.write(fd, b'pwned', 5)\nlibc.close(fd)\nprint('wrote')")
    result = run_code(libc_write)
    assert result.returncode != 0 and "wrote" not in result.stdout and "sandbox" in result.stderr
    # reaching _ctypes without the import statement still trips the ctypes.* audit events
    sneaky = ("import importlib.util\nm = importlib.util.module_from_spec(importlib.util.find_spec('_ctypes'))\n"
              "m.dlopen(None, 0)\nprint('loaded')")
    result = run_code(sneaky)
    assert result.returncode != 0 and "loaded" not in result.stdout and "sandbox" in result.stderr
    assert not target.exists()


def test_other_escape_hatches_are_refused(tmp_path_factory):
    outside = tmp_path_factory.mktemp("outside")
    target, victim = outside / "evil.txt", outside / "victim.txt"
    victim.write_text("keep")
    victim.chmod(0o644)
    attempts = [
        f"import os\nd = os.open({str(outside)!r}, os.O_RDONLY)\n"
        "os.close(os.open('evil.txt', os.O_WRONLY | os.O_CREAT, dir_fd=d))",
        f"import os\nfd = os.open({str(victim)!r}, os.O_RDONLY)\nos.fchmod(fd, 0o777)",
        "import _posixsubprocess\n_posixsubprocess.fork_exec()",
        "import os\nos.system('true')",
    ]
    for code in attempts:
        result = run_code(code)
        assert result.returncode != 0 and _refused(result.stderr), (code, result.stderr)
    assert not target.exists() and victim.read_text() == "keep" and victim.stat().st_mode & 0o777 == 0o644
    assert run_code("import subprocess\nprint('imported')").stdout == "imported\n"
