"""Run untrusted Python in a separate, limited process (file system isolated, no network, bounded time/memory/output,
minimal environment, writes only in a temp dir). `child.py` is the script the sandbox process runs; it is launched
by path, never imported. `python -m lamina.sandbox` prints the isolation in force here."""
from lamina.sandbox.execute import (SandboxResult, TestReport, TestResult, execute_tests, network_isolated,
                                    run_code, sandbox_isolation)
from lamina.sandbox.isolation import Isolation

__all__ = ["Isolation", "SandboxResult", "TestReport", "TestResult", "execute_tests", "network_isolated", "run_code",
           "sandbox_isolation"]
