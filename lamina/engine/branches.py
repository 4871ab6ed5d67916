"""Branches: token sequences kept in the KV cache between steps, for step-level search (beam, DVTS, particles, A*).

A branch is opened from token ids (its prompt is prefilled, then it is parked: its blocks are held, it is not
scheduled) and extended one step at a time: an extension is an ordinary request whose `n = k` samples start from the
branch's tokens, share its blocks copy-on-write and, when they stop (a stop string such as a step delimiter,
`max_tokens`...), are parked as the branch's children, each itself a branch. A parked branch always holds its tokens
but the last one in the cache (the last token is computed by the next extension, whose samples need its logits).

Parked branches stay pinned until released or until the pool runs short: the scheduler then drops the least recently
used ones (their blocks go back to the pool, still findable by prefix hash) before it preempts running work; a
dropped branch keeps its token ids and is recomputed when next extended. Child i of a branch at path p (the root's
path is ()) samples from `make_generator(seed, path_index(p + (i,)))`: a search is reproducible from its seed and
independent of whatever else the engine runs.
"""
from __future__ import annotations

import hashlib
import itertools
import random
from dataclasses import dataclass, field

from lamina.engine.kv_cache import BlockManager
from lamina.engine.outputs import OutputKind, TokenLogprob
from lamina.engine.request import Request, make_generator
from lamina.engine.sampling_params import SamplingParams
from lamina.engine.scheduler import Scheduler
from lamina.engine.sequence import Sequence, SequenceStatus
from lamina.engine.tokenizer import Tokenizer
from lamina.errors import InvalidRequestError

DETOKENIZER_CONTEXT = 8  # tokens of a branch a child's detokenizer starts from (spacing and multi-byte characters)


def path_index(path: tuple[int, ...]) -> int:
    """A stable 62-bit number for a path in a branch tree (the same in every process and Python run)."""
    digest = hashlib.blake2b(repr(path).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 2


@dataclass(slots=True, eq=False)
class Branch:
    branch_id: str
    seq: Sequence  # its token ids (the path from the root's prompt), its blocks; step tokens are seq.output_token_ids
    parent_id: str | None
    path: tuple[int, ...]
    num_root_tokens: int  # tokens of the prompt the tree was opened from
    parent_logprob: float = 0.0  # the parent's cumulative logprob
    last_used: int = 0  # for dropping the least recently used parked branch first
    tail: int | None = None  # while opening: the last token, appended once the others are prefilled

    @property
    def is_parked(self) -> bool:
        return self.seq.status is SequenceStatus.FINISHED


@dataclass(frozen=True, slots=True)
class BranchOutput:
    """What a branch holds. token_ids: every token from the root's prompt on; output_token_ids and text: those after
    the root's prompt (text decoded from them, stop strings included); step_*: what its last extension added (step_text
    cut at the stop string unless include_stop_str_in_output). cumulative_logprob: sum of the sampled tokens' logprobs
    (nats) from the root on. finish_reason/stop_reason: why its last step ended (None for a root). resident: its
    blocks are in the cache (False once dropped under memory pressure; it is recomputed when extended)."""

    branch_id: str
    parent_id: str | None
    path: tuple[int, ...]
    token_ids: list[int]
    output_token_ids: list[int]
    text: str
    step_token_ids: list[int]
    step_text: str
    step_logprobs: list[TokenLogprob]
    cumulative_logprob: float
    finish_reason: str | None
    stop_reason: str | int | None
    resident: bool


@dataclass(frozen=True, slots=True)
class Extension:
    """An extension in flight: the request whose samples become `branch_ids` (child i is `branch_ids[i]`)."""

    request_id: str
    branch_ids: list[str]


@dataclass(frozen=True, slots=True)
class BlockUsage:
    """KV blocks held by a set of branches: `num_used_blocks` distinct ones, against `num_copy_per_path_blocks`, the
    blocks they would hold if each branch kept its own copy of its path (no sharing)."""

    num_used_blocks: int
    num_copy_per_path_blocks: int


@dataclass(slots=True)
class BranchTable:
    """The engine's branches; `pending` holds the work in flight (openings by branch id, extensions by request id)."""

    blocks: BlockManager
    scheduler: Scheduler
    tokenizer: Tokenizer
    branches: dict[str, Branch] = field(default_factory=dict)
    pending: dict[str, Branch | tuple[Request, list[Branch]]] = field(default_factory=dict)
    clock: itertools.count = field(default_factory=itertools.count)

    def get(self, branch_id: str) -> Branch:
        branch = self.branches.get(branch_id)
        if branch is None:
            raise InvalidRequestError(f"branch {branch_id!r} is unknown or was released")
        return branch

    def parked(self, branch_id: str) -> Branch:
        branch = self.get(branch_id)
        if not branch.is_parked:
            raise InvalidRequestError(f"branch {branch_id!r} is still being computed; wait for its open or extension")
        return branch

    def open(self, branch_id: str, token_ids: list[int], arrival: int) -> Branch:
        """Prefill all of token_ids but the last (parked at once when that is nothing)."""
        if branch_id in self.branches:
            raise InvalidRequestError(f"branch id {branch_id!r} is already in use")
        seq = Sequence(branch_id, 0, list(token_ids), len(token_ids), SamplingParams(), make_generator(0, 0),
                       arrival=arrival, parks=True)
        branch = self.branches[branch_id] = Branch(branch_id, seq, None, (), len(token_ids))
        if len(token_ids) == 1:
            self._park(branch)
            return branch
        seq.prefill_only = True  # scheduled as a prompt of all tokens but the last, sampling nothing
        branch.tail = seq.token_ids.pop()
        self.pending[branch_id] = branch
        self.scheduler.add(seq)
        return branch

    def extend(self, branch_id: str, params: SamplingParams, request_id: str, arrival: int,
               output_kind: OutputKind) -> Request:
        """The request sampling `params.n` children of the branch, each to be parked as a branch when it stops."""
        parent = self.parked(branch_id)
        if not isinstance(params, SamplingParams):
            raise InvalidRequestError(f"sampling params must be SamplingParams, got {type(params).__name__}")
        seed = params.seed if params.seed is not None else random.getrandbits(62)
        if params.logprobs is None:
            params = params.replace(logprobs=0)  # a branch always knows its cumulative logprob
        tokens = parent.seq.token_ids
        request = Request(request_id, None, list(tokens), params, output_kind)
        for index in range(params.n):
            child_id = f"{branch_id}.{index}"
            if child_id in self.branches:
                raise InvalidRequestError(f"branch {branch_id!r} already has children; release them to extend again")
        parent.last_used = next(self.clock)
        children: list[Branch] = []
        for index in range(params.n):
            path = (*parent.path, index)
            detokenizer = self.tokenizer.detokenizer()
            detokenizer.prime(tokens[-DETOKENIZER_CONTEXT:])
            seq = Sequence(request_id, index, list(tokens), len(tokens), params, make_generator(seed, path_index(path)),
                           seed, detokenizer, arrival=arrival, logprobs=[], parks=True)
            child = Branch(f"{branch_id}.{index}", seq, branch_id, path, parent.num_root_tokens,
                           self.cumulative_logprob(parent))
            self.branches[child.branch_id] = child
            children.append(child)
            request.seqs.append(seq)
            if parent.seq.block_table:
                self.blocks.fork(parent.seq, seq)
                self.scheduler.add_running(seq)
            else:  # dropped under memory pressure: recomputed from its tokens (the prefix cache may still hold them)
                self.scheduler.add(seq)
        self.pending[request_id] = (request, children)
        return request

    def settle(self) -> None:
        """Park the openings whose prefill is done and the children of finished extensions (released if aborted)."""
        for key, work in list(self.pending.items()):
            if isinstance(work, Branch):
                seq = work.seq
                if seq.status is SequenceStatus.RUNNING and seq.num_uncomputed_tokens == 0:
                    self.scheduler.running.remove(seq)
                    seq.token_ids.append(work.tail)
                    seq.prefill_only, work.tail = False, None
                    self._park(work)
                    del self.pending[key]
                continue
            request, children = work
            if request.finished:
                del self.pending[key]
                for child in children:
                    if request.aborted:
                        if child.branch_id in self.branches:
                            self.release(child.branch_id)
                    else:
                        child.last_used = next(self.clock)

    def fail_openings(self) -> list[str]:
        """Forget every branch still being opened (its prefill failed: a step raised); their ids. Extensions fail
        with their requests (aborted, their children released by `settle`)."""
        failed = [key for key, work in self.pending.items() if isinstance(work, Branch)]
        for key in failed:
            branch = self.pending.pop(key)
            self.scheduler.finish(branch.seq)  # out of the running/waiting queues (a parking seq keeps its blocks)
            self.blocks.free(branch.seq)
            del self.branches[key]
        return failed

    def release(self, branch_id: str) -> None:
        """Forget the branch and give its blocks back (shared blocks stay while other branches hold them)."""
        branch = self.parked(branch_id)
        del self.branches[branch_id]
        self.blocks.free(branch.seq)

    def reclaim(self) -> bool:
        """Drop the least recently used parked branch that holds blocks; False when there is none."""
        held = [b for b in self.branches.values() if b.is_parked and b.seq.block_table]
        if not held:
            return False
        self.blocks.free(min(held, key=lambda b: b.last_used).seq)
        return True

    def cumulative_logprob(self, branch: Branch) -> float:
        return branch.parent_logprob + sum(lp.logprob for lp in branch.seq.logprobs or ())

    def output(self, branch_id: str) -> BranchOutput:
        branch = self.parked(branch_id)
        seq = branch.seq
        outputs = seq.token_ids[branch.num_root_tokens :]
        return BranchOutput(branch_id, branch.parent_id, branch.path, list(seq.token_ids), outputs,
                            self.tokenizer.decode(outputs), list(seq.output_token_ids), seq.text,
                            list(seq.logprobs or ()), self.cumulative_logprob(branch), seq.finish_reason,
                            seq.stop_reason, bool(seq.block_table))

    def usage(self, branch_ids: list[str] | None = None) -> BlockUsage:
        chosen = self.branches.values() if branch_ids is None else [self.get(b) for b in branch_ids]
        tables = [b.seq.block_table for b in chosen]
        return BlockUsage(len({block for table in tables for block in table}), sum(len(t) for t in tables))

    def _park(self, branch: Branch) -> None:
        branch.seq.status = SequenceStatus.FINISHED
        branch.last_used = next(self.clock)

