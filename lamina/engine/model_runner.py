"""Turns a scheduled batch into tensors, runs the model and samples the next token of every row that samples."""
from __future__ import annotations

from types import ModuleType

import torch
from torch import Tensor

from lamina.engine.kv_cache import KVCache
from lamina.engine.models.attention import AttentionMetadata, PrefillSegment, decode_mask
from lamina.engine.models.llama import LlamaForCausalLM
from lamina.engine.prompt_logprobs import PromptScores, rows_to_score, score
from lamina.engine.sampler import SampleResult, sample
from lamina.engine.scheduler import ScheduledBatch
from lamina.engine.sequence import Sequence


class ModelRunner:
    def __init__(self, model: LlamaForCausalLM, cache: KVCache, block_size: int,
                 kernels: ModuleType | None = None, native_attention: bool = False) -> None:
        self.model = model
        self.cache = cache
        self.block_size = block_size
        self.kernels = kernels  # the native sampler when set (CPU, fp32)
        self.attention_kernels = kernels if native_attention else None  # native decode attention (head_dim % 8 == 0)

    @torch.inference_mode()
    def run(self, batch: ScheduledBatch, copies: list[tuple[int, int]]
            ) -> tuple[list[Sequence], SampleResult | None, list[PromptScores]]:
        """Apply the copy-on-write `copies`, forward the batch and sample.

        Returns the sequences that get a token now (those whose prompt or decode row is complete, then the children
        forked in this batch, which sample from their parent's logits), their SampleResult, one row each, and the
        prompt logprobs of the prefill chunks whose request asked for them (SamplingParams.prompt_logprobs).
        """
        samplers, logits, scores = self._forward(batch, copies)
        if logits is None:
            return [], None, scores
        if batch.forks:
            row = {seq.seq_id: i for i, seq in enumerate(samplers)}
            rows = [*range(len(samplers)), *(row[parent.seq_id] for parent, _ in batch.forks)]
            samplers = samplers + [child for _, child in batch.forks]
            logits = logits[torch.tensor(rows)]
        return samplers, sample(logits, samplers, self.kernels), scores

    def _forward(self, batch: ScheduledBatch, copies: list[tuple[int, int]]
                 ) -> tuple[list[Sequence], Tensor | None, list[PromptScores]]:
        """The sequences that sample a token now, their logits [len, vocab], and the prompt logprobs asked for."""
        self.cache.copy_blocks(copies)
        ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        meta = AttentionMetadata(self.cache.k, self.cache.v, slot_mapping=torch.empty(0, dtype=torch.long),
                                 kernels=self.attention_kernels)
        sample_rows: list[int] = []
        samplers: list[Sequence] = []
        scored: list[tuple[Sequence, range, int]] = []  # (seq, prompt positions to score, their first row)
        for seq, chunk, seq_slots in batch.prefills:
            start, begin = len(ids), seq.num_computed_tokens
            to_score = rows_to_score(seq, begin, chunk)
            if to_score:
                scored.append((seq, to_score, start + to_score.start - begin))
            ids += seq.token_ids[begin : begin + chunk]
            positions += range(begin, begin + chunk)
            slots += seq_slots
            table = torch.tensor(seq.block_table) if begin > 0 else None
            meta.prefills.append(PrefillSegment(start, start + chunk, begin + chunk, table))
            if begin + chunk == len(seq.token_ids) and not seq.prefill_only:
                sample_rows.append(len(ids) - 1)
                samplers.append(seq)
        meta.decode_start = len(ids)
        if batch.decodes:
            self._decode_metadata(batch.decodes, meta)
            for seq, slot in batch.decodes:
                sample_rows.append(len(ids))
                samplers.append(seq)
                ids.append(seq.token_ids[-1])
                positions.append(len(seq.token_ids) - 1)
                slots.append(slot)
        meta.slot_mapping = torch.tensor(slots, dtype=torch.long)
        hidden = self.model(torch.tensor(ids, dtype=torch.long), torch.tensor(positions, dtype=torch.long), meta)
        scores = [score(seq, rows, hidden[first : first + len(rows)], self.model.compute_logits)
                  for seq, rows, first in scored]
        if not samplers:
            return [], None, scores
        return samplers, self.model.compute_logits(hidden[torch.tensor(sample_rows)]).float(), scores

    def _decode_metadata(self, decodes: list[tuple[Sequence, int]], meta: AttentionMetadata) -> None:
        width = max(len(seq.block_table) for seq, _ in decodes)
        tables = torch.zeros(len(decodes), width, dtype=torch.long)
        lengths = torch.empty(len(decodes), dtype=torch.long)
        for row, (seq, _) in enumerate(decodes):
            tables[row, : len(seq.block_table)] = torch.tensor(seq.block_table)
            lengths[row] = len(seq.token_ids)
        meta.decode_block_tables = tables
        meta.decode_lengths = lengths
        if self.attention_kernels is not None:
            return
        meta.decode_mask = decode_mask(lengths, width, self.cache.k[0], None)
