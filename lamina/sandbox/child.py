"""Runs inside the sandbox process: installs the audit hook, then executes the code parts in one namespace.

Invoked as `python -I -S -B child.py WORKDIR PARTS_JSON NONCE_FD STATUS_FD [LANDLOCK_JSON]`; never imported by
Lamina itself. With LANDLOCK_JSON ({"read": [...], "write": [...]}) the process first confines itself with Landlock.
The parent writes a random nonce into the pipe NONCE_FD; it is read and the pipe closed before any candidate code
runs, and the nonce is written to STATUS_FD only after the last part ran to completion, so an early exit
(`sys.exit`, `os._exit`, ...) cannot pass for a finished run.
"""
import json
import os
import struct
import sys
import traceback

MEMORY_EXIT = 113
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC
PATH_EVENTS = {
    "os.remove": (0,), "os.rmdir": (0,), "os.mkdir": (0,), "os.chmod": (0,), "os.chown": (0,),
    "os.truncate": (0,), "os.utime": (0,), "os.mkfifo": (0,), "os.mknod": (0,), "shutil.rmtree": (0,),
    "os.rename": (0, 1), "os.link": (0, 1), "os.symlink": (0, 1), "shutil.copyfile": (1,),
    "shutil.copytree": (1,), "shutil.move": (0, 1), "os.setxattr": (0,), "os.removexattr": (0,),
    "os.chflags": (0,), "os.lchflags": (0,),
}
BLOCKED_EVENTS = ("socket.", "subprocess.", "os.system", "os.exec", "os.posix_spawn", "os.spawn",
                  "os.fork", "os.forkpty", "pty.", "os.kill", "os.killpg", "signal.pthread_kill")
# ctypes (and _ctypes) can call libc directly and so skip every check here: refuse the import, and every ctypes.*
# event (dlopen, dlsym, cdata, call_function, ...) in case the extension module is reached some other way.
BLOCKED_MODULES = ("ctypes", "_ctypes", "_posixsubprocess")
DIR_FLAGS = getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_PATH", 0)


def install_guard(root: str) -> None:
    root = os.path.realpath(root)
    allowed = (root + os.sep, "/dev/null")

    def inside(path) -> bool:
        if path is None:
            return True
        if isinstance(path, int):  # an fd (os.fchmod, ...): judge the file it refers to
            try:
                path = os.readlink(f"/proc/self/fd/{path}")
            except OSError:
                return True
            if not path.startswith(os.sep):  # pipe:[...], socket:[...], anon_inode:...
                return True
        real = os.path.realpath(os.fsdecode(path))
        return real == root or real.startswith(allowed[0]) or real == allowed[1]

    def deny(what: str) -> None:
        raise PermissionError(f"sandbox: {what} is not allowed")

    def hook(event: str, args: tuple) -> None:
        if event == "open":
            path, mode, flags = args
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or bool((flags or 0) & WRITE_FLAGS)
            if writing and not isinstance(path, int) and not inside(path):
                deny(f"writing {path!r} outside the sandbox directory")
            # a directory fd outside the sandbox would let dir_fd= relative writes land outside it
            if not isinstance(path, int) and path is not None and (
                    (flags or 0) & DIR_FLAGS or os.path.isdir(path)) and not inside(path):
                deny(f"opening directory {path!r} outside the sandbox directory")
        elif event == "import":
            name = str(args[0])
            if name in BLOCKED_MODULES or name.startswith("ctypes."):
                raise ImportError(f"sandbox: importing {name} is not allowed")
        elif event.startswith("ctypes."):
            deny(f"{event} (native code access is disabled)")
        elif event in PATH_EVENTS:
            for i in PATH_EVENTS[event]:
                if i < len(args) and not inside(args[i]):
                    deny(f"{event} on {args[i]!r} outside the sandbox directory")
        elif event.startswith(BLOCKED_EVENTS):
            deny(f"{event} (network and process creation are disabled)")

    _disable_fork_exec()
    sys.addaudithook(hook)


def _disable_fork_exec() -> None:
    """_posixsubprocess.fork_exec raises no audit event; swap it for a refusal (re-imports are refused by the hook)."""
    import _posixsubprocess

    def fork_exec(*args, **kwargs):
        raise PermissionError("sandbox: _posixsubprocess.fork_exec (process creation) is not allowed")

    _posixsubprocess.fork_exec = fork_exec


def restrict_paths(read: list, write: list) -> None:
    """Landlock: from here on this process may read (and execute) only beneath `read` and write only beneath `write`;
    where the kernel's ABI has them, TCP bind/connect and signals or abstract sockets beyond itself are refused too."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long

    def call(*args) -> int:
        result = libc.syscall(*args)
        if result < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"landlock: {os.strerror(err)}")
        return result

    u32 = ctypes.c_uint32
    abi = call(ctypes.c_long(444), None, ctypes.c_size_t(0), u32(1))  # LANDLOCK_CREATE_RULESET_VERSION
    fs = (1 << (13 + min(abi, 3) - 1)) - 1 | ((1 << 15) if abi >= 5 else 0)  # every fs right this ABI knows
    file_rights = fs & (1 | 2 | 4 | (1 << 14) | (1 << 15))  # execute, write, read, truncate, ioctl_dev
    read_rights = 1 | 4 | 8  # execute, read_file, read_dir
    attr = (ctypes.c_uint64 * 3)(fs, 3 if abi >= 4 else 0, 3 if abi >= 6 else 0)  # fs, net (tcp), scoped
    ruleset = call(ctypes.c_long(444), ctypes.byref(attr), ctypes.c_size_t(24 if abi >= 6 else 16 if abi >= 4 else 8),
                   u32(0))
    for paths, rights in ((read, read_rights), (write, fs)):
        for path in paths:
            fd = os.open(path, getattr(os, "O_PATH", os.O_RDONLY) | os.O_CLOEXEC)
            try:
                allowed = rights if os.path.isdir(path) else rights & file_rights
                rule = ctypes.create_string_buffer(struct.pack("=Qi", allowed, fd), 12)
                call(ctypes.c_long(445), ctypes.c_int(ruleset), ctypes.c_int(1), rule, u32(0))  # PATH_BENEATH
            finally:
                os.close(fd)
    if libc.prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS, required to restrict an unprivileged process
        raise OSError(ctypes.get_errno(), "landlock: prctl(PR_SET_NO_NEW_PRIVS) failed")
    call(ctypes.c_long(446), ctypes.c_int(ruleset), u32(0))  # landlock_restrict_self
    os.close(ruleset)
    for name in [m for m in sys.modules if m in BLOCKED_MODULES or m.startswith("ctypes.")]:
        del sys.modules[name]  # candidate code must import ctypes afresh, which the audit hook refuses


def restore_builtins() -> None:
    """`python -S` skips site, which defines exit(), quit() and help(); programs expect them (site adds no path)."""
    import site

    site.setquit()
    site.sethelper()


def run_parts(parts: list) -> int:
    """Exit code of running every part in turn; a SystemExit in any part but a lone one is reported as a failure."""
    namespace = {"__name__": "__main__", "__builtins__": __builtins__}
    for i, (name, source) in enumerate(parts):
        try:
            exec(compile(source, name, "exec"), namespace)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            if len(parts) == 1:
                return code
            what = "program exited before the tests ran" if i < len(parts) - 1 else "test exited before finishing"
            sys.stderr.write(f"\nsandbox: {what} (SystemExit({exc.code!r}) in {name})\n")
            return code or 1
        except MemoryError:
            sys.stderr.write("MemoryError: sandbox memory limit exceeded\n")
            return MEMORY_EXIT
        except BaseException as exc:
            traceback.print_exception(type(exc), exc, exc.__traceback__.tb_next)
            return 1
    return 0


def main() -> None:
    workdir, parts_file, nonce_fd, status_fd = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    landlock = json.loads(sys.argv[5]) if len(sys.argv) > 5 else None
    nonce = _read_all(nonce_fd)
    os.close(nonce_fd)
    with open(parts_file, encoding="utf-8") as fh:
        parts = json.load(fh)
    if landlock is not None:
        restrict_paths(landlock["read"], landlock["write"])
    restore_builtins()
    sys.argv = ["program"]
    sys.path.insert(0, workdir)
    install_guard(workdir)
    code = run_parts(parts)
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BaseException:
        pass
    if code == 0:
        try:
            os.write(status_fd, nonce)  # only reached when every part ran to its end
        except OSError:
            pass
    os._exit(code)


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 4096):
        chunks.append(chunk)
    return b"".join(chunks)


if __name__ == "__main__":
    main()
