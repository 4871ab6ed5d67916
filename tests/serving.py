"""`lamina serve` as a real subprocess on a free loopback port, for the tests that talk to it over HTTP."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serve(*args: str, timeout_s: float = 180.0) -> Iterator[str]:
    """Starts `python -m lamina serve ARGS` on a free loopback port; yields its base URL once /health answers."""
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.pop("LAMINA_API_KEY", None)
    log = Path(os.environ.get("TMPDIR", "/tmp")) / f"lamina-serve-{port}.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "lamina", "serve", "--host", "127.0.0.1", "--port", str(port),
                                 *args], stdout=out, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"lamina serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                if httpx.get(base + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"lamina serve did not become healthy in {timeout_s}s:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def post(base: str, path: str, **body) -> httpx.Response:
    """POST a JSON body to the served model "default" (body fields win), as a client would."""
    return httpx.post(base + path, json={"model": "default", **body}, timeout=120)
