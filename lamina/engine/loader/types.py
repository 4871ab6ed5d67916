"""What a loader returns."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from gguf import GGMLQuantizationType

from lamina.engine.config import ModelConfig
from lamina.engine.tokenizer import Tokenizer


NATIVE_QUANTS = frozenset({GGMLQuantizationType.Q4_0, GGMLQuantizationType.Q4_1, GGMLQuantizationType.Q5_0,
                           GGMLQuantizationType.Q8_0,
                           GGMLQuantizationType.Q4_K, GGMLQuantizationType.Q5_K, GGMLQuantizationType.Q6_K})


@dataclass(slots=True)
class QuantizedWeight:
    """A 2-D tensor as the file stores it: `rows` [out_features, bytes per row] of `qtype` blocks along in_features."""
    qtype: GGMLQuantizationType
    rows: np.ndarray
    shape: tuple[int, int]


@dataclass(slots=True)
class LoadedModel:
    config: ModelConfig
    # Hugging Face Llama/Qwen2 names; no lm_head.weight when embeddings are tied. A GGUF's dequantizes on each read.
    weights: Mapping[str, torch.Tensor]
    tokenizer: Tokenizer
    source: Path
    quantized: dict[str, QuantizedWeight] = field(default_factory=dict)  # same names; blocks native kernels can use
