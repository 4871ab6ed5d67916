"""Run untrusted Python in a separate, limited process (no network, bounded time/memory/output, writes only in a
temp dir). `child.py` is the script the sandbox process runs; it is launched by path, never imported."""
from lamina.sandbox.execute import (SandboxResult, TestReport, TestResult, execute_tests, network_isolated,
                                    run_code)

__all__ = ["SandboxResult", "TestReport", "TestResult", "execute_tests", "network_isolated", "run_code"]
