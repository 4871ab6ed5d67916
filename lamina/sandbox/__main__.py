"""`python -m lamina.sandbox`: print the isolation candidate code runs under here; exit 1 when runs are refused."""
import sys

from lamina.errors import SandboxError
from lamina.sandbox import sandbox_isolation


def main() -> int:
    try:
        chosen = sandbox_isolation()
    except SandboxError as exc:
        print(exc, file=sys.stderr)
        return 2
    print(f"sandbox isolation: {chosen.mechanism}" + ("" if chosen.permitted else " (runs refused)"))
    if chosen.reason:
        print(f"reason: {chosen.reason}")
    return 0 if chosen.permitted else 1


if __name__ == "__main__":
    sys.exit(main())
