"""Continuous batching under a token budget: decodes first, then prefill chunks; recompute preemption on a full pool."""
from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from lamina.engine.kv_cache import BlockManager
from lamina.engine.sequence import Sequence, SequenceStatus
from lamina.engine.speculative import propose


@dataclass(slots=True)
class ScheduledBatch:
    prefills: list[tuple[Sequence, int, list[int]]] = field(default_factory=list)  # (seq, new tokens, their slots)
    # (seq, drafts, slots): its last token then its draft tokens (speculative decoding; usually none), one slot each
    decodes: list[tuple[Sequence, list[int], list[int]]] = field(default_factory=list)
    preempted: list[Sequence] = field(default_factory=list)
    forks: list[tuple[Sequence, Sequence]] = field(default_factory=list)  # (parent, child): child samples from parent's row

    @property
    def is_empty(self) -> bool:
        return not self.prefills and not self.decodes


class Scheduler:
    def __init__(self, block_manager: BlockManager, max_num_seqs: int, max_num_batched_tokens: int,
                 max_seq_len: int | None = None) -> None:
        self.blocks = block_manager
        self.max_seq_len = max_seq_len or block_manager.num_blocks * block_manager.block_size  # tokens a seq may reach
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        # Frees blocks held outside the scheduler (parked branches) when the pool runs short; False once none are left.
        self.reclaim: Callable[[], bool] | None = None

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def add(self, seq: Sequence) -> None:
        seq.status = SequenceStatus.WAITING
        self.waiting.append(seq)

    def add_running(self, seq: Sequence) -> None:
        """A forked child joins the running set directly: it already holds its parent's blocks."""
        seq.status = SequenceStatus.RUNNING
        self.running.append(seq)

    def finish(self, seq: Sequence) -> None:
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        if not seq.parks:
            self.blocks.free(seq)
        seq.status = SequenceStatus.FINISHED

    def schedule(self) -> ScheduledBatch:
        batch = ScheduledBatch()
        budget = self.max_num_batched_tokens
        self.running.sort(key=lambda s: (s.arrival, s.index))
        scheduled: set[int] = set()
        for seq in list(self.running):
            if seq.status is not SequenceStatus.RUNNING or seq.num_uncomputed_tokens != 1 or budget == 0:
                continue
            # A speculating sequence verifies its last token and its drafts: 1 + d rows, all counted in the budget.
            drafts = propose(seq, self.max_seq_len, self.max_num_batched_tokens - 1)
            if 1 + len(drafts) > budget:
                if not seq.params.greedy:
                    scheduled.add(seq.seq_id)  # it waits a step: cutting its drafts would change its sample
                    continue
                drafts = drafts[: budget - 1]  # greedy output does not depend on the drafts: it need not wait
            if not self._make_room(seq, 1 + len(drafts), scheduled, batch):
                continue
            batch.decodes.append((seq, drafts, self.blocks.allocate(seq, 1 + len(drafts))))
            scheduled.add(seq.seq_id)
            budget -= 1 + len(drafts)
        for seq in list(self.running):
            if seq.status is not SequenceStatus.RUNNING or seq.seq_id in scheduled or budget == 0:
                continue
            chunk = min(seq.num_uncomputed_tokens, budget)
            if not self._make_room(seq, chunk, scheduled, batch):
                continue
            batch.prefills.append((seq, chunk, self.blocks.allocate(seq, chunk)))
            scheduled.add(seq.seq_id)
            budget -= chunk
        while self.waiting and budget > 0 and not batch.preempted:
            seq = self.waiting[0]
            if self.running and len(self.running) + seq.params.n > self.max_num_seqs:
                break
            cached = self.blocks.match_prefix(seq)
            chunk = min(seq.num_uncomputed_tokens, budget)
            if not self._fits(seq, chunk):
                self.blocks.free(seq)
                break
            if seq.num_preemptions == 0:
                seq.num_cached_tokens = cached
            self.waiting.popleft()
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            batch.prefills.append((seq, chunk, self.blocks.allocate(seq, chunk)))
            scheduled.add(seq.seq_id)
            budget -= chunk
        return batch

    def advance(self, batch: ScheduledBatch) -> None:
        """After the forward pass: the batch's tokens are in the cache; full blocks join the prefix cache."""
        for seq, chunk, _ in batch.prefills:
            seq.num_computed_tokens += chunk
            self.blocks.register_full_blocks(seq)
        for seq, _, _ in batch.decodes:
            seq.num_computed_tokens += 1
            self.blocks.register_full_blocks(seq)

    def settle_drafts(self, batch: ScheduledBatch) -> None:
        """After the outputs are appended: a sequence that speculated holds its accepted drafts' KV (all its tokens but
        the last); the blocks that only its rejected drafts reached go back to the pool."""
        for seq, drafts, _ in batch.decodes:
            if drafts and seq.block_table:
                seq.num_computed_tokens = len(seq.token_ids) - 1
                self.blocks.trim(seq)
                self.blocks.register_full_blocks(seq)

    def _make_room(self, seq: Sequence, num_tokens: int, scheduled: set[int], batch: ScheduledBatch) -> bool:
        """Drop parked branches, then preempt the latest arrivals, until seq fits; False if seq itself was preempted.

        The earliest running sequence always fits (no sequence outgrows the pool, see LLMEngine.max_seq_len), so
        every step makes progress: a full pool never stalls the scheduler.
        """
        while not self._fits(seq, num_tokens):
            victims = [s for s in self.running if s.seq_id not in scheduled]
            victim = victims[-1]
            self._preempt(victim)
            batch.preempted.append(victim)
            if victim is seq:
                return False
        return True

    def _fits(self, seq: Sequence, num_tokens: int) -> bool:
        """Whether the pool has room for seq's next num_tokens, after dropping parked branches if it is short."""
        while self.blocks.blocks_needed(seq, num_tokens) > self.blocks.num_free_blocks:
            if self.reclaim is None or not self.reclaim():
                return False
        return True

    def _preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self.blocks.free(seq)
        seq.status = SequenceStatus.WAITING
        seq.num_preemptions += 1
        self.waiting.appendleft(seq)
