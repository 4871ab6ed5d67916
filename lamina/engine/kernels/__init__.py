"""Native CPU kernels, compiled from C++ on first use by torch's extension builder and cached per machine.

`native_kernels()` returns the compiled module, or None where it cannot be had (not an x86 CPU with AVX2 and FMA, no C++
compiler, `LAMINA_NATIVE_KERNELS=0`); `unavailable_reason()` then says why. Callers fall back to PyTorch.
Build once ahead of time with `python -m lamina.engine.kernels`.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import sys
import warnings
from pathlib import Path
from types import ModuleType

import torch

SOURCES = [Path(__file__).with_name(name) for name in ("module.cpp", "qgemm.cpp", "attention.cpp", "sampler.cpp", "elementwise.cpp")]
HEADER = Path(__file__).with_name("vec_math.h")
CFLAGS = ["-O3", "-mavx2", "-mfma", "-ffp-contract=off", "-fopenmp"]
_state: dict[str, object] = {}


def module_name() -> str:
    """Named by the sources, flags, torch version and checkout: torch's builder rebuilds a module whose recorded
    source paths differ, so two checkouts sharing one name would rebuild each other's copy on every start."""
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in SOURCES + [HEADER]) + " ".join(CFLAGS).encode()
                            + torch.__version__.encode() + str(SOURCES[0].parent).encode()).hexdigest()
    return f"lamina_kernels_{digest[:12]}"


def _why_not() -> str | None:
    if os.environ.get("LAMINA_NATIVE_KERNELS", "1") == "0":
        return "disabled by LAMINA_NATIVE_KERNELS=0"
    capability = torch.backends.cpu.get_cpu_capability()
    if capability not in ("AVX2", "AVX512"):
        return f"this CPU lacks AVX2/FMA (PyTorch reports {capability})"
    return None


def native_kernels() -> ModuleType | None:
    if "module" not in _state:
        _state["reason"] = _why_not()
        _state["module"] = None if _state["reason"] else _build()
    return _state["module"]  # type: ignore[return-value]


def unavailable_reason() -> str | None:
    native_kernels()
    return _state["reason"]  # type: ignore[return-value]


def _build() -> ModuleType | None:
    from torch.utils import cpp_extension

    if shutil.which("ninja") is None:  # pip put the `ninja` dependency beside this Python; the venv may be inactive
        os.environ["PATH"] = str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")
    name = module_name()
    build_dir = Path(cpp_extension._get_build_directory(name, verbose=False))
    if not (build_dir / f"{name}.so").exists():
        print("lamina: compiling native CPU kernels (once per machine, about a minute)...", file=sys.stderr, flush=True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return cpp_extension.load(name, [str(p) for p in SOURCES], extra_cflags=CFLAGS, extra_ldflags=["-fopenmp"],
                                      build_directory=str(build_dir), verbose=False)
    except Exception as exc:  # no compiler, no ninja, a failed build: fall back, and say why
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        _state["reason"] = f"building the C++ kernels failed: {first_line}"
        print(f"lamina: native CPU kernels unavailable ({_state['reason']}); using PyTorch ops", file=sys.stderr)
        return None

