#!/usr/bin/env bash
# The llama.cpp peer for benchmarks/engine.py: llama-cpp-python 0.3.36 built for this machine's CPU
# (-DGGML_NATIVE=ON) in its own virtual environment, .venv-llamacpp (about 8 minutes on 2 cores).
# Then: python benchmarks/engine.py --llamacpp .venv-llamacpp/bin/python
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv-llamacpp/bin/python ] || "$PY" -m venv .venv-llamacpp
CMAKE_ARGS="-DGGML_NATIVE=ON" .venv-llamacpp/bin/python -m pip install -q llama-cpp-python==0.3.36 numpy
.venv-llamacpp/bin/python -c "import llama_cpp; print('llama.cpp peer ready:', llama_cpp.__version__)"
