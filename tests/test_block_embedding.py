"""The embedding lookup from the GGUF's blocks (models/block_embedding.py) gives the rows of the dequantized table,
bit for bit, for every format the native linears read."""
from __future__ import annotations

import pytest
import torch

from lamina.engine.loader.types import NATIVE_QUANTS
from lamina.engine.models.block_embedding import BlockEmbedding
from tests.test_native_kernels import quantized, width_for


@pytest.mark.parametrize("qtype", sorted(NATIVE_QUANTS), ids=lambda q: q.name)
def test_looked_up_rows_are_the_dequantized_tables_bit_for_bit(qtype):
    weight, table = quantized(qtype, (300, width_for(qtype)), seed=int(qtype))
    embedding = BlockEmbedding(weight)
    ids = torch.tensor([[0, 299, 7], [7, 150, 3]])
    rows = embedding(ids)
    assert rows.shape == (2, 3, width_for(qtype)) and rows.dtype == torch.float32
    assert torch.equal(rows, table[ids])
    assert torch.equal(embedding(torch.tensor([], dtype=torch.long)), table[:0])
    assert torch.equal(embedding.weight, table)  # the whole table, for code that reads it whole
    for bad in (-1, 300):
        with pytest.raises(IndexError, match="out of range"):
            embedding(torch.tensor([1, bad]))
