"""The model families the engine runs, by `ModelConfig.architecture`."""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lamina.engine.models.llama import LlamaForCausalLM


def model_class(architecture: str) -> type[LlamaForCausalLM]:
    """The module class for an architecture in SUPPORTED_ARCHITECTURES (Gemma 3's extends Llama's)."""
    if architecture == "gemma3":
        from lamina.engine.models.gemma3 import Gemma3ForCausalLM

        return Gemma3ForCausalLM
    from lamina.engine.models.llama import LlamaForCausalLM

    return LlamaForCausalLM
