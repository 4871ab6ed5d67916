"""Build the native CPU kernels now (scripts/bootstrap.sh does), instead of on the first engine start."""
import sys

from lamina.engine.kernels import native_kernels, unavailable_reason

if __name__ == "__main__":
    module = native_kernels()
    print(f"native CPU kernels: {'ready (' + module.isa + ')' if module else unavailable_reason()}")
    sys.exit(0 if module else 1)
