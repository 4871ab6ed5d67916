"""An embedding table that stays in the GGUF file's blocks: each lookup dequantizes only the rows it reads.

With the native linears, the embedding table is the one tensor left that start-up dequantized whole: for the default
model 49152 x 576 fp32 values (113 MB of fresh memory written, 0.03 s on an idle machine and up to 0.3 s on a busy
one) of which a step reads a few rows. The rows come from the loader's `dequantize_rows`, the function that
dequantizes the whole table otherwise, so they are the same values bit for bit.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from lamina.engine.loader.gguf import dequantize_rows
from lamina.engine.loader.types import QuantizedWeight


class BlockEmbedding(nn.Module):
    """nn.Embedding's lookup (input_ids [...] -> [..., embedding_dim] float32) from `weight`'s blocks (rows of the
    file, mapped). IndexError for an id outside [0, num_embeddings), as nn.Embedding."""

    def __init__(self, weight: QuantizedWeight) -> None:
        super().__init__()
        self.blocks, self.qtype = weight.rows, weight.qtype
        self.num_embeddings, self.embedding_dim = weight.shape
        self._table: Tensor | None = None

    def forward(self, input_ids: Tensor) -> Tensor:
        ids = input_ids.reshape(-1).cpu().numpy()
        if ids.size and (ids.min() < 0 or ids.max() >= self.num_embeddings):
            raise IndexError(f"token id out of range [0, {self.num_embeddings}): {ids.min()}..{ids.max()}")
        values = torch.from_numpy(dequantize_rows(self.blocks[ids], self.qtype))
        return values.view(*input_ids.shape, self.embedding_dim)

    @property
    def weight(self) -> Tensor:
        """The whole table [num_embeddings, embedding_dim] float32, dequantized on first use, for code that reads it
        whole (the lookup never does)."""
        if self._table is None:
            self._table = torch.from_numpy(dequantize_rows(self.blocks, self.qtype))
        return self._table
