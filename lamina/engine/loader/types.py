"""What a loader returns."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from lamina.engine.config import ModelConfig
from lamina.engine.tokenizer import Tokenizer


@dataclass(slots=True)
class LoadedModel:
    config: ModelConfig
    weights: dict[str, torch.Tensor]  # Hugging Face Llama/Qwen2 names; no lm_head.weight when embeddings are tied
    tokenizer: Tokenizer
    source: Path
