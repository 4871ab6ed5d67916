"""LLMEngine: requests in; each step schedules, runs the model (forward and sample) and postprocesses into outputs."""
from __future__ import annotations

import itertools
import os
import random

import torch

from lamina.engine.branches import BlockUsage, BranchOutput, BranchTable, Extension
from lamina.engine.builder import build_model
from lamina.engine.config import EngineConfig
from lamina.engine.kv_cache import BlockManager
from lamina.engine.model_runner import ModelRunner
from lamina.engine.output_processor import OutputProcessor
from lamina.engine.prompt_logprobs import prompt_logprobs_slots
from lamina.engine.outputs import OutputKind, RequestOutput
from lamina.engine.request import PromptLimits, Request, make_generator, make_request
from lamina.engine.sampling_params import SamplingParams
from lamina.engine.scheduler import ScheduledBatch, Scheduler
from lamina.engine.sequence import Sequence
from lamina.errors import InvalidRequestError


class LLMEngine:
    """`LLMEngine(model, **options)`: options are EngineConfig's fields (an unknown one is an InvalidRequestError)."""

    def __init__(self, model: str = "default", **config: object) -> None:
        self.config = cfg = EngineConfig.from_options(config)
        torch.set_num_threads(cfg.num_threads or os.cpu_count() or 1)
        built = build_model(model, cfg)
        self.model_name = model
        self.model_config = mc = built.model_config
        self.model = built.model
        self.tokenizer = built.tokenizer
        self.max_model_len = built.max_model_len
        self.kernels = built.kernels
        self.linear_backend = built.linear_backend
        self.panel_cache = built.panel_cache  # e.g. "panels: 121 mapped from the cache" (models/panel_cache.py)
        self.cache = built.cache
        # A sequence never outgrows the context, nor the KV pool (then no step could hold it: it ends with "length").
        self.max_seq_len = min(self.max_model_len, built.num_blocks * cfg.block_size)
        self.blocks = BlockManager(built.num_blocks, cfg.block_size, cfg.enable_prefix_caching)
        self.scheduler = Scheduler(self.blocks, cfg.max_num_seqs, cfg.max_num_batched_tokens, self.max_seq_len)
        self.runner = ModelRunner(self.model, self.cache, cfg.block_size, self.kernels,
                                  native_attention=mc.head_dim % 8 == 0)
        self.eos_token_ids = set(self.tokenizer.eos_token_ids) | set(mc.eos_token_ids)
        self.processor = OutputProcessor(self.tokenizer, self.scheduler, self.eos_token_ids, self.max_seq_len)
        self.limits = PromptLimits(mc.vocab_size, self.max_model_len, cfg.block_size, built.num_blocks)
        self.requests: dict[str, Request] = {}
        self.branches = BranchTable(self.blocks, self.scheduler, self.tokenizer)
        self.scheduler.reclaim = self.branches.reclaim
        self.driver: object | None = None  # the AsyncEngine stepping this engine on its thread, if any
        self._ids = itertools.count()
        self._arrivals = itertools.count()

    @property
    def num_free_blocks(self) -> int:
        return self.blocks.num_free_blocks

    @property
    def num_total_blocks(self) -> int:
        return self.blocks.num_blocks

    def has_unfinished_requests(self) -> bool:
        return bool(self.requests or self.branches.pending)

    def prepare_request(self, prompt: str | list[int], params: SamplingParams | None = None,
                        request_id: str | None = None, output_kind: OutputKind = OutputKind.CUMULATIVE) -> Request:
        """Tokenize and validate (InvalidRequestError); safe to call from any thread. See OutputKind for what
        `step()` reports for it."""
        return make_request(prompt, params, request_id or f"req-{next(self._ids)}", self.tokenizer, self.limits,
                            output_kind)

    def submit(self, request: Request) -> None:
        if request.request_id in self.requests:
            raise InvalidRequestError(f"request id {request.request_id!r} is already running")
        params = request.params
        seed = params.seed if params.seed is not None else random.getrandbits(62)
        seq = self._sequence(request, 0, seed, next(self._arrivals))
        seq.fork_pending = params.n > 1
        request.seqs.append(seq)
        self.requests[request.request_id] = request
        self.scheduler.add(seq)

    def add_request(self, prompt: str | list[int], params: SamplingParams | None = None,
                    request_id: str | None = None, output_kind: OutputKind = OutputKind.CUMULATIVE) -> str:
        request = self.prepare_request(prompt, params, request_id, output_kind)
        self.submit(request)
        return request.request_id

    def abort(self, request_id: str) -> RequestOutput | None:
        """Stop a request and free its blocks; its last output (finish_reason "abort"), None if it is not running."""
        request = self.requests.pop(request_id, None)
        out = None if request is None else self.processor.abort(request)
        if self.branches.pending:
            self.branches.settle()  # an aborted extension's children are released
        return out

    @torch.inference_mode()
    def step(self) -> list[RequestOutput]:
        """Schedule, run the model (forward and sample), postprocess; the touched requests' outputs (by OutputKind)."""
        batch = self._schedule()
        if batch.is_empty:
            return []
        samplers, result, prompt_scores = self.runner.run(batch, self.blocks.take_pending_copies())
        self.scheduler.advance(batch)
        self.processor.record_prompt_logprobs(prompt_scores)
        outputs = [] if result is None else self.processor.process(samplers, result, self.requests)
        self.scheduler.settle_drafts(batch)
        if self.branches.pending:
            self.branches.settle()
        return outputs

    # Branches (see branches.py): steps open and extend them; `branch` reads a parked one.

    def open_branch(self, prompt: str | list[int], branch_id: str | None = None) -> str:
        """A root branch of `prompt` (validated as a request's prompt); its prefill runs in the next steps, then it is
        parked (`is_branch_pending(branch_id)` turns False). Returns its id."""
        request = self.prepare_request(prompt)
        branch_id = branch_id or f"branch-{next(self._ids)}"
        self.branches.open(branch_id, request.prompt_token_ids, next(self._arrivals))
        return branch_id

    def extend_branch(self, branch_id: str, params: SamplingParams | None = None,
                      output_kind: OutputKind = OutputKind.FINAL_ONLY) -> Extension:
        """Sample `params.n` continuations of a parked branch for one step (up to a stop or max_tokens), sharing its
        blocks; child i becomes branch `f"{branch_id}.{i}"` once the returned request finishes (its RequestOutputs come
        from `step()` by `output_kind`; child i is output i). Child i's random stream comes from (params.seed, its
        path), a random seed when params.seed is None. InvalidRequestError: unknown, released or pending branch, or
        children not yet released."""
        request_id = f"{branch_id}/step-{next(self._ids)}"
        request = self.branches.extend(branch_id, params or SamplingParams(), request_id, next(self._arrivals),
                                       output_kind)
        self.requests[request_id] = request
        return Extension(request_id, [f"{branch_id}.{i}" for i in range(request.params.n)])

    def fail_pending_branches(self) -> list[str]:
        """After a step raised: forget the branches still being opened (their blocks back to the pool); their ids.
        Pending extensions end with their requests (`abort`)."""
        return self.branches.fail_openings()

    def is_branch_pending(self, key: str) -> bool:
        """Whether a branch being opened (by branch id) or an extension (by request id) is still running."""
        return key in self.branches.pending

    def branch(self, branch_id: str) -> BranchOutput:
        """What a parked branch holds (InvalidRequestError: unknown, released or still pending)."""
        return self.branches.output(branch_id)

    def hidden_states(self, prompts: list[str | list[int]], layers: list[int],
                      positions: list[list[int]] | None = None) -> torch.Tensor:
        """[batch, len(layers), P, hidden] float32: the loaded model's residual-stream states of each prompt (a text,
        tokenized as a request's, or token ids) at `layers` (0 = embeddings .. num_layers, the last after the final
        norm, as transformers' output_hidden_states; negatives from the end) and `positions` (P per prompt, negative
        from the end; None: the last token). One uncached forward over all the prompts' tokens, outside the KV cache
        (nothing is read from or kept in it); safe between steps, not during one. InvalidRequestError for a bad
        prompt (as a request's), layer or position."""
        from lamina.engine.hidden_states import hidden_states

        ids = [make_request(p, None, "states", self.tokenizer, self.limits).prompt_token_ids for p in prompts]
        return hidden_states(self.model, ids, layers, positions)

    def branch_hidden_states(self, branch_ids: str | list[str], layers: list[int],
                             positions: list[list[int]] | None = None) -> torch.Tensor:
        """`hidden_states` of each parked branch's tokens (its root's prompt and every step since: BranchOutput's
        token_ids; one id or a list), e.g. `positions` at its step boundaries for a process verifier. The forward
        runs over the branch's whole token list again (no KV-cache read): it spares a second model load and
        re-tokenizing, not the compute. InvalidRequestError for an unknown, released or pending branch."""
        from lamina.engine.hidden_states import hidden_states

        ids = [branch_ids] if isinstance(branch_ids, str) else list(branch_ids)
        return hidden_states(self.model, [self.branches.output(b).token_ids for b in ids], layers, positions)

    def release_branch(self, branch_id: str) -> None:
        """Forget a parked branch and give back its blocks (blocks its relatives share stay)."""
        self.branches.release(branch_id)

    def branch_blocks(self, branch_ids: list[str] | None = None) -> BlockUsage:
        """KV blocks held by these branches (default: all), shared, against a copy per path."""
        return self.branches.usage(branch_ids)

    def _schedule(self) -> ScheduledBatch:
        """The scheduler's batch; a prompt whose prefill completes in it forks its n - 1 siblings, sharing every block."""
        batch = self.scheduler.schedule()
        completing = [seq for seq, chunk, _ in batch.prefills if seq.num_computed_tokens + chunk == len(seq.token_ids)]
        completing += [seq for seq, _, _ in batch.decodes]  # a prompt's last token may be scheduled as a decode
        for parent in completing:
            if not parent.fork_pending:
                continue
            parent.fork_pending = False
            request = self.requests[parent.request_id]
            for index in range(1, parent.params.n):
                child = self._sequence(request, index, parent.seed, parent.arrival)
                child.num_cached_tokens = parent.num_cached_tokens
                self.blocks.fork(parent, child)
                child.num_computed_tokens = len(child.token_ids)  # once this batch's forward has run
                self.scheduler.add_running(child)
                request.seqs.append(child)
                batch.forks.append((parent, child))
        return batch

    def _sequence(self, request: Request, index: int, seed: int, arrival: int) -> Sequence:
        params = request.params
        return Sequence(request.request_id, index, list(request.prompt_token_ids), len(request.prompt_token_ids),
                        params, make_generator(seed, index), seed, self.tokenizer.detokenizer(), arrival=arrival,
                        logprobs=[] if params.logprobs is not None else None, matcher=request.matcher(),
                        prompt_logprobs=prompt_logprobs_slots(request, index))
