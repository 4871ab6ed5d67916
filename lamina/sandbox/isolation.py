"""File system isolation of sandboxed runs: the Python runtime the child needs, and the command that confines it.

Mechanisms, strongest first:
- `bwrap` (bubblewrap): a new root holding only read-only binds of the runtime, a fresh /proc (new pid namespace),
  a minimal /dev and the run's work dir; new user, network, ipc, uts and cgroup namespaces; no capabilities.
- `landlock`: the child restricts itself (Linux Landlock LSM, applied in child.py before candidate code runs) to
  reading the runtime and writing its work dir; TCP and signals/abstract sockets beyond itself are refused where
  the kernel's Landlock ABI has them; the network namespace comes from `unshare -n` when the host permits it.
- `none`: only the audit hook and `unshare -n`; used only when asked for explicitly.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from functools import lru_cache

MECHANISMS = ("bwrap", "landlock")
CHOICES = ("auto", *MECHANISMS, "none")
ENV_VAR = "LAMINA_SANDBOX_ISOLATION"
SANDBOX_UID = 65534  # nobody, inside bwrap's user namespace
LIB_DIRS = ("/lib", "/lib32", "/lib64", "/libx32", "/usr/lib", "/usr/lib32", "/usr/lib64", "/usr/libx32")
DEVICES_READ = ("/dev/urandom", "/dev/zero")
DEVICES_WRITE = ("/dev/null",)
# Landlock system call numbers are the same on every architecture (asm-generic).
LANDLOCK_CREATE_RULESET = 444


@dataclass(frozen=True, slots=True)
class Runtime:
    """What the child interpreter needs to start and import the standard library (absolute host paths)."""
    executable: str
    read: tuple[str, ...]         # files and dirs to expose read-only (symlinks among them resolved separately)
    hidden: tuple[str, ...]       # site-packages dirs inside `read` that are masked with an empty dir


@dataclass(frozen=True, slots=True)
class Isolation:
    """The mechanism in force. `reason` says why a stronger one is not (empty when bwrap is in force);
    `permitted` is False when nothing works and the caller did not opt out (runs are then refused)."""
    mechanism: str
    reason: str = ""
    permitted: bool = True


def requested_isolation(isolation: str | None) -> str:
    """The caller's choice, else $LAMINA_SANDBOX_ISOLATION, else "auto"; raises ValueError on an unknown name."""
    choice = isolation or os.environ.get(ENV_VAR, "").strip() or "auto"
    if choice not in CHOICES:
        where = "isolation" if isolation else ENV_VAR
        raise ValueError(f"{where}={choice!r} is not one of {', '.join(CHOICES)}")
    return choice


@lru_cache(maxsize=1)
def runtime() -> Runtime:
    """The base interpreter (not a venv's wrapper, whose site-packages would point into the project) and its stdlib."""
    exe = os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)
    probe = ("import json, site, sys, sysconfig; v = sysconfig.get_config_var; print(json.dumps({'path': sys.path, "
             "'site': site.getsitepackages(), 'lib': v('LIBDIR') if v('Py_ENABLE_SHARED') else None, "
             "'soname': v('INSTSONAME')}))")
    info = json.loads(subprocess.run([exe, "-I", "-S", "-c", probe], capture_output=True, text=True, check=True,
                                     env={"PATH": os.defpath}, timeout=30).stdout)
    read = [exe, *(p for p in info["path"] if os.path.exists(p))]
    if info["lib"] and info["soname"]:
        read.append(os.path.join(info["lib"], info["soname"]))
    read += [p for p in (*LIB_DIRS, "/etc/ld.so.cache") if os.path.lexists(p)]
    read = [p for p in dict.fromkeys(read) if os.path.exists(p)]
    hidden = [p for p in info["site"] if os.path.isdir(p) and any(p.startswith(r + os.sep) for r in read)]
    return Runtime(exe, tuple(read), tuple(hidden))


def bwrap_command(rt: Runtime, *, child: tuple[str, str], parts: str, work: str, empty: str) -> list[str]:
    """The bwrap argv prefix: a root with only `rt`, the child script (bound from child[0] to child[1], so no
    project path shows), the parts file and `work` (writable, also the working directory)."""
    bwrap = shutil.which("bwrap")
    if not bwrap:
        raise FileNotFoundError("bwrap is not installed (Debian: apt-get install -y bubblewrap)")
    cmd = [bwrap, "--unshare-all", "--unshare-user", "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID),
           "--cap-drop", "ALL", "--die-with-parent"]
    if "--disable-userns" in _bwrap_help(bwrap):
        cmd.append("--disable-userns")
    for path in sorted(set(_with_targets(rt.read))):
        if os.path.islink(path) and os.path.dirname(path) == "/":  # /lib -> usr/lib on merged-/usr systems
            cmd += ["--symlink", os.readlink(path), path]
        else:
            cmd += ["--ro-bind", path, path]
    for path in rt.hidden:
        cmd += ["--ro-bind", empty, path]
    cmd += ["--proc", "/proc", "--dev", "/dev", "--ro-bind", *child, "--ro-bind", parts, parts,
            "--bind", work, work, "--chdir", work, "--remount-ro", "/"]
    return cmd


def landlock_rules(rt: Runtime, work: str) -> dict[str, list[str]]:
    """What child.py hands to Landlock: paths it may read (and execute) and paths it may also write."""
    read = [*_with_targets(rt.read), *(d for d in DEVICES_READ if os.path.exists(d))]
    return {"read": sorted(set(read)), "write": [work, *DEVICES_WRITE]}


def landlock_abi() -> int:
    """The kernel's Landlock ABI version (0 when Landlock is missing or disabled)."""
    import ctypes  # the parent is trusted; the child's audit hook refuses ctypes to candidate code

    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    version = libc.syscall(ctypes.c_long(LANDLOCK_CREATE_RULESET), None, ctypes.c_size_t(0), ctypes.c_uint32(1))
    return max(0, int(version))


def _with_targets(paths) -> list[str]:
    """`paths` plus the real path of each symlink among them (a bind or rule follows the link to its target)."""
    out = []
    for path in paths:
        out.append(path)
        if os.path.islink(path):
            out.append(os.path.realpath(path))
    return out


@lru_cache(maxsize=4)
def _bwrap_help(bwrap: str) -> str:
    try:
        return subprocess.run([bwrap, "--help"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""
