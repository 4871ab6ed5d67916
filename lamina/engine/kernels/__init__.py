"""Native CPU kernels, compiled from C++ on first use by torch's extension builder and cached per machine.

One module is built per instruction set, from the same sources with that set's compiler flags: `avx2` (AVX2 + FMA)
and `avx512` (AVX-512 F/BW/VL/DQ; the block-quantized GEMM then works on 16-wide vectors, with bit-identical
results). `native_kernels()` returns the best variant this CPU runs (PyTorch's `get_cpu_capability()`, which
`ATEN_CPU_CAPABILITY=avx2` can lower), falling back to the next one when a build fails; `LAMINA_KERNEL_ISA=avx2`
or `avx512` asks for one. The module's `isa` attribute says which it is. It is None where no variant can be had
(not an x86 CPU with AVX2 and FMA, no C++ compiler, `LAMINA_NATIVE_KERNELS=0`); `unavailable_reason()` then says
why and callers fall back to PyTorch. Build ahead of time with `python -m lamina.engine.kernels`.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import platform
import shutil
import sys
import time
import warnings
from pathlib import Path
from types import ModuleType

import torch

HERE = Path(__file__).parent
SOURCES = [HERE / name for name in ("module.cpp", "qgemm.cpp", "attention.cpp", "sampler.cpp", "elementwise.cpp", "decode.cpp")]
HEADERS = sorted(HERE.glob("*.h"))
CFLAGS = ["-O3", "-ffp-contract=off", "-fopenmp"]
ISA_FLAGS = {"avx512": ["-mavx2", "-mfma", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq"],
             "avx2": ["-mavx2", "-mfma"]}  # best first
_CAPABLE = {"AVX512": ["avx512", "avx2"], "AVX2": ["avx2"]}  # torch's CPU capability -> variants it can run
_state: dict[str, object] = {}
_variants: dict[str, ModuleType | None] = {}
_failures: dict[str, str] = {}


REPORTED_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


def _cpuinfo(field: str) -> str:
    try:
        with open("/proc/cpuinfo") as info:
            return next((line.split(":", 1)[1].strip() for line in info if line.startswith(field)), "")
    except OSError:
        return ""


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), or what the platform module says."""
    return _cpuinfo("model name") or platform.processor() or platform.machine()


def cpu_description() -> str:
    """One line for benchmark tables: CPU model, which of the flags that matter here it has, the kernels in use."""
    flags = set(_cpuinfo("flags").split())
    has = [f for f in REPORTED_FLAGS if f in flags]
    lacks = [f for f in REPORTED_FLAGS if f not in flags]
    return (f"CPU: {cpu_model()}, {os.cpu_count()} logical cores; flags: {' '.join(has) or 'unknown'}"
            f"{' (not: ' + ' '.join(lacks) + ')' if lacks and flags else ''}; "
            f"kernels: {isa() or 'none (' + str(unavailable_reason()) + ')'}")


def module_name(isa: str = "avx2") -> str:
    """Named by the sources, flags, torch version and checkout: torch's builder rebuilds a module whose recorded
    source paths differ, so two checkouts sharing one name would rebuild each other's copy on every start."""
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in SOURCES + HEADERS) + " ".join(CFLAGS + ISA_FLAGS[isa]).encode()
                            + torch.__version__.encode() + str(HERE).encode()).hexdigest()
    return f"lamina_kernels_{isa}_{digest[:12]}"


def cpu_variants() -> list[str]:
    """The variants this CPU can run, best first (empty on a CPU without AVX2/FMA)."""
    return list(_CAPABLE.get(torch.backends.cpu.get_cpu_capability(), []))


def _candidates() -> tuple[list[str], str | None]:
    """The variants to try in order, and why there are none."""
    if os.environ.get("LAMINA_NATIVE_KERNELS", "1") == "0":
        return [], "disabled by LAMINA_NATIVE_KERNELS=0"
    runnable = cpu_variants()
    if not runnable:
        return [], f"this CPU lacks AVX2/FMA (PyTorch reports {torch.backends.cpu.get_cpu_capability()})"
    wanted = os.environ.get("LAMINA_KERNEL_ISA", "").strip().lower()
    if wanted and wanted not in runnable:
        print(f"lamina: LAMINA_KERNEL_ISA={wanted} is not one of the variants this CPU runs ({', '.join(runnable)}); "
              f"using the best of them", file=sys.stderr)
    return ([wanted] if wanted in runnable else []) + [isa for isa in runnable if isa != wanted], None


def native_kernels() -> ModuleType | None:
    """The best kernel module that builds on this CPU (see the module docstring), or None."""
    if "module" not in _state:
        candidates, reason = _candidates()
        module = None
        for isa in candidates:
            module = kernels_for(isa)
            if module is not None:
                break
            if isa != candidates[-1]:
                print(f"lamina: {isa} kernels unavailable ({_failures[isa]}); trying {candidates[candidates.index(isa) + 1]}",
                      file=sys.stderr)
        if module is None and candidates:
            reason = _failures[candidates[-1]]
            print(f"lamina: native CPU kernels unavailable ({reason}); using PyTorch ops", file=sys.stderr)
        _state["module"], _state["reason"] = module, reason
    return _state["module"]  # type: ignore[return-value]


def unavailable_reason() -> str | None:
    native_kernels()
    return _state["reason"]  # type: ignore[return-value]


def isa() -> str | None:
    """The instruction set of the kernels in use ("avx2", "avx512"), or None without native kernels."""
    module = native_kernels()
    return None if module is None else module.isa


def kernels_for(isa: str) -> ModuleType | None:
    """The `isa` variant, built on first use (None, with the reason in `_failures`, when it does not build).
    Only call it for a variant in `cpu_variants()`: another would stop the process on its first instruction."""
    if isa not in _variants:
        _variants[isa] = _build(isa)
    return _variants[isa]


STALE_LOCK_S = 900  # a build takes a minute or two; a lock this old was left by a build that was killed


def clear_stale_lock(build_dir: Path, max_age_s: float = STALE_LOCK_S) -> bool:
    """Remove the build lock torch's cpp_extension leaves when a build is killed (it would wait for it forever);
    True when one was removed. A lock younger than max_age_s (seconds) may be a build in progress: kept."""
    lock = build_dir / "lock"
    try:
        age = time.time() - lock.stat().st_mtime
    except FileNotFoundError:
        return False
    if age < max_age_s:
        return False
    print(f"lamina: removing a stale kernel build lock ({lock}, {age / 60:.0f} minutes old)", file=sys.stderr)
    lock.unlink(missing_ok=True)
    return True


def _build_root() -> Path:
    """torch's extension build root, as `cpp_extension._get_build_directory` computes it (without importing
    cpp_extension, whose setuptools import takes ~0.05-0.15 s)."""
    root = os.environ.get("TORCH_EXTENSIONS_DIR")
    if root is not None:
        return Path(root)
    import torch._appdirs

    accelerator = (f"rocm{torch.version.hip.replace('.', '')}" if torch.version.hip is not None
                   else f"cu{torch.version.cuda.replace('.', '')}" if torch.version.cuda is not None else "cpu")
    python = f"py{sys.version_info.major}{sys.version_info.minor}{getattr(sys, 'abiflags', '')}"
    return Path(os.path.realpath(torch._appdirs.user_cache_dir(appname="torch_extensions"))) / f"{python}_{accelerator}"


def _load_built(name: str) -> ModuleType | None:
    """The module `name` when its build is there and no build is under way (its name hashes the sources, flags,
    torch version and checkout, so a library of that name was built from these sources), else None."""
    build_dir = _build_root() / name
    library = build_dir / f"{name}.so"
    if not library.is_file() or (build_dir / "lock").exists():
        return None
    try:
        spec = importlib.util.spec_from_file_location(name, library)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    except (ImportError, OSError):
        return None  # the full path below rebuilds or says why
    return module


def _build(isa: str) -> ModuleType | None:
    module = _load_built(module_name(isa))
    if module is not None:
        return module
    from torch.utils import cpp_extension

    if shutil.which("ninja") is None:  # pip put the `ninja` dependency beside this Python; the venv may be inactive
        os.environ["PATH"] = str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")
    name = module_name(isa)
    build_dir = Path(cpp_extension._get_build_directory(name, verbose=False))
    clear_stale_lock(build_dir)
    if not (build_dir / f"{name}.so").exists():
        print(f"lamina: compiling native CPU kernels for {isa} (once per machine, about a minute)...", file=sys.stderr, flush=True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return cpp_extension.load(name, [str(p) for p in SOURCES], extra_cflags=CFLAGS + ISA_FLAGS[isa],
                                      extra_ldflags=["-fopenmp"], build_directory=str(build_dir), verbose=False)
    except Exception as exc:  # no compiler, no ninja, a failed build: the caller falls back, and says why
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        _failures[isa] = f"building the {isa} C++ kernels failed: {first_line}"
        return None
