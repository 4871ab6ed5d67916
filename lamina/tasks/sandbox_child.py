"""Runs inside the sandbox process: installs the audit hook, then executes the code parts in one namespace.

Invoked as `python -I -B sandbox_child.py WORKDIR PARTS_JSON`; never imported by Lamina itself.
"""
import json
import os
import sys
import traceback

MEMORY_EXIT = 113
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC
PATH_EVENTS = {
    "os.remove": (0,), "os.rmdir": (0,), "os.mkdir": (0,), "os.chmod": (0,), "os.chown": (0,),
    "os.truncate": (0,), "os.utime": (0,), "os.mkfifo": (0,), "os.mknod": (0,), "shutil.rmtree": (0,),
    "os.rename": (0, 1), "os.link": (0, 1), "os.symlink": (0, 1), "shutil.copyfile": (1,),
    "shutil.copytree": (1,), "shutil.move": (0, 1),
}
BLOCKED_EVENTS = ("socket.", "subprocess.", "os.system", "os.exec", "os.posix_spawn", "os.spawn",
                  "os.fork", "os.forkpty", "pty.", "os.kill", "os.killpg", "signal.pthread_kill")


def install_guard(root: str) -> None:
    root = os.path.realpath(root)
    allowed = (root + os.sep, "/dev/null")

    def inside(path) -> bool:
        if isinstance(path, int) or path is None:
            return True
        real = os.path.realpath(os.fsdecode(path))
        return real == root or real.startswith(allowed[0]) or real == allowed[1]

    def deny(what: str) -> None:
        raise PermissionError(f"sandbox: {what} is not allowed")

    def hook(event: str, args: tuple) -> None:
        if event == "open":
            path, mode, flags = args
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or bool((flags or 0) & WRITE_FLAGS)
            if writing and not inside(path):
                deny(f"writing {path!r} outside the sandbox directory")
        elif event in PATH_EVENTS:
            for i in PATH_EVENTS[event]:
                if i < len(args) and not inside(args[i]):
                    deny(f"{event} on {args[i]!r} outside the sandbox directory")
        elif event.startswith(BLOCKED_EVENTS):
            deny(f"{event} (network and process creation are disabled)")

    sys.addaudithook(hook)


def run_parts(parts: list) -> int:
    namespace = {"__name__": "__main__", "__builtins__": __builtins__}
    for name, source in parts:
        try:
            exec(compile(source, name, "exec"), namespace)
        except SystemExit as exc:
            return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except MemoryError:
            sys.stderr.write("MemoryError: sandbox memory limit exceeded\n")
            return MEMORY_EXIT
        except BaseException as exc:
            traceback.print_exception(type(exc), exc, exc.__traceback__.tb_next)
            return 1
    return 0


def main() -> None:
    workdir, parts_file = sys.argv[1], sys.argv[2]
    with open(parts_file, encoding="utf-8") as fh:
        parts = json.load(fh)
    sys.argv = ["program"]
    sys.path.insert(0, workdir)
    install_guard(workdir)
    code = run_parts(parts)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
