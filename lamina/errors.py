"""Every error Lamina raises on purpose derives from LaminaError, so callers (and the CLI) can show one clear line."""
from __future__ import annotations


class LaminaError(Exception):
    """Base class: the message names the file, field or value at fault."""


class ModelLoadError(LaminaError):
    """A model file or folder is missing, truncated, corrupt or of an unsupported architecture."""


class UnsupportedModelError(ModelLoadError):
    """The model's architecture or tensor type is not implemented."""


class InvalidRequestError(LaminaError, ValueError):
    """A request or its sampling parameters are invalid (bad value, unknown field, prompt too long)."""


class SpecError(LaminaError, ValueError):
    """An architecture, task or config file does not validate; the message names the file and the path."""


class BudgetExceededError(LaminaError):
    """Running would exceed a declared budget."""


class BackendError(LaminaError):
    """A model backend failed (HTTP error after retries, unreachable server)."""


class SandboxError(LaminaError):
    """The code sandbox could not run a program."""
