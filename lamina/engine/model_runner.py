"""Turns a scheduled batch into tensors, runs the model and samples the next token of every row that samples."""
from __future__ import annotations

from types import ModuleType

import torch
from torch import Tensor

from lamina.engine.kv_cache import KVCache
from lamina.engine.models.attention import AttentionMetadata, PrefillSegment, decode_mask
from lamina.engine.models.llama import LlamaForCausalLM
from lamina.engine.models.native_decode import native_decode
from lamina.engine.prompt_logprobs import PromptScores, rows_to_score, score
from lamina.engine.sampler import SampleResult, sample
from lamina.engine.scheduler import ScheduledBatch
from lamina.engine.sequence import Sequence
from lamina.engine.speculative import verify_all


class ModelRunner:
    def __init__(self, model: LlamaForCausalLM, cache: KVCache, block_size: int,
                 kernels: ModuleType | None = None, native_attention: bool = False) -> None:
        self.model = model
        self.cache = cache
        self.block_size = block_size
        self.kernels = kernels  # the native sampler when set (CPU, fp32)
        self.attention_kernels = kernels if native_attention else None  # native decode attention (head_dim % 8 == 0)
        # all layers of a decode-only step in one native call (models/native_decode.py); None: the Python forward
        self.native_step, self.decode_path = native_decode(model, self.attention_kernels)

    @torch.inference_mode()
    def run(self, batch: ScheduledBatch, copies: list[tuple[int, int]]
            ) -> tuple[list[Sequence], SampleResult | None, list[PromptScores]]:
        """Apply the copy-on-write `copies`, forward the batch and sample.

        Returns one row per token to append, its sequence and its SampleResult: a row for each sequence whose prompt
        or decode row is complete, then for the children forked in this batch (they sample from their parent's
        logits), then for each sequence that speculated, its kept drafts and one more token, in order (see
        speculative.py); and the prompt logprobs of the prefill chunks whose request asked for them.
        """
        samplers, logits, scores = self._forward(batch, copies)
        if logits is None:
            return [], None, scores
        plain: list[Sequence] = []
        rows: list[int] = []
        speculating: list[tuple[Sequence, list[int], int]] = []
        first: dict[int, int] = {}  # seq id -> its first logits row
        row = 0
        for seq, drafts in samplers:
            first[seq.seq_id] = row
            row += 1 + len(drafts)
            if drafts:
                speculating.append((seq, drafts, first[seq.seq_id]))
            else:
                plain.append(seq)
                rows.append(first[seq.seq_id])
        plain += [child for _, child in batch.forks]
        rows += [first[parent.seq_id] for parent, _ in batch.forks]
        result = sample(logits[torch.tensor(rows)], plain, self.kernels) if plain else SampleResult([])
        if speculating:
            seqs, verified = verify_all(logits, speculating)
            plain += seqs
            result.extend(verified)
        return plain, result, scores

    def _forward(self, batch: ScheduledBatch, copies: list[tuple[int, int]]
                 ) -> tuple[list[tuple[Sequence, list[int]]], Tensor | None, list[PromptScores]]:
        """The sequences that sample now with their drafts, their logits [rows, vocab] (a row for each, 1 + drafts
        rows for one that speculates), and the prompt logprobs asked for."""
        self.cache.copy_blocks(copies)
        ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        meta = AttentionMetadata(self.cache.k, self.cache.v, slot_mapping=torch.empty(0, dtype=torch.long),
                                 kernels=self.attention_kernels)
        sample_rows: list[int] = []
        samplers: list[tuple[Sequence, list[int]]] = []
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
                samplers.append((seq, []))
        meta.decode_start = len(ids)
        if batch.decodes:
            self._decode_metadata(batch.decodes, meta)
            for seq, drafts, seq_slots in batch.decodes:  # a row per token: the last one, then each draft
                sample_rows += range(len(ids), len(ids) + 1 + len(drafts))
                samplers.append((seq, drafts))
                ids += [seq.token_ids[-1], *drafts]
                positions += range(len(seq.token_ids) - 1, len(seq.token_ids) + len(drafts))
                slots += seq_slots
        meta.slot_mapping = torch.tensor(slots, dtype=torch.long)
        input_ids, input_positions = torch.tensor(ids, dtype=torch.long), torch.tensor(positions, dtype=torch.long)
        if self.native_step is not None and not meta.prefills and batch.decodes:
            hidden = self.native_step.step(input_ids, input_positions, meta)
        else:
            hidden = self.model(input_ids, input_positions, meta)
        scores = [score(seq, rows, hidden[first : first + len(rows)], self.model.compute_logits)
                  for seq, rows, first in scored]
        if not samplers:
            return [], None, scores
        return samplers, self.model.compute_logits(hidden[torch.tensor(sample_rows)]).float(), scores

    def _decode_metadata(self, decodes: list[tuple[Sequence, list[int], list[int]]], meta: AttentionMetadata) -> None:
        """A row per decode token: its sequence's block table and the context it sees (its own token included)."""
        width = max(len(seq.block_table) for seq, _, _ in decodes)
        tables, lengths = [], []
        for seq, drafts, _ in decodes:
            table = torch.tensor(seq.block_table)
            for extra in range(1 + len(drafts)):
                tables.append(table)
                lengths.append(len(seq.token_ids) + extra)
        meta.decode_block_tables = torch.nn.utils.rnn.pad_sequence(tables, batch_first=True)
        meta.decode_lengths = torch.tensor(lengths, dtype=torch.long)
        if self.attention_kernels is not None:
            return
        meta.decode_mask = decode_mask(meta.decode_lengths, width, self.cache.k[0], None)
