"""LLMEngine: requests in, one scheduler step at a time, RequestOutputs out."""
from __future__ import annotations

import itertools
import os
import random
from dataclasses import dataclass, field, fields

import torch

from lamina.engine.config import EngineConfig
from lamina.engine.kv_cache import BlockManager, KVCache
from lamina.engine.model_runner import ModelRunner
from lamina.engine.kernels import native_kernels
from lamina.engine.models.block_quant import use_block_quant_linears
from lamina.engine.models.llama import LlamaForCausalLM
from lamina.engine.models.cpu_linear import Int8Linear, PackedLinear, packing_available, replace_linears
from lamina.engine.outputs import CompletionOutput, RequestOutput, TokenLogprob
from lamina.engine.sampler import SampleResult, sample
from lamina.engine.sampling_params import SamplingParams
from lamina.engine.scheduler import Scheduler
from lamina.engine.sequence import Sequence
from lamina.errors import InvalidRequestError

_GOLDEN = 0x9E3779B97F4A7C15
QUANTIZATIONS = (None, "int8")


@dataclass(slots=True, eq=False)
class Request:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    params: SamplingParams
    seqs: list[Sequence] = field(default_factory=list)
    aborted: bool = False

    @property
    def finished(self) -> bool:
        return self.aborted or (len(self.seqs) == self.params.n and all(s.is_finished for s in self.seqs))


def make_generator(seed: int, index: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed + _GOLDEN * (index + 1)) % (2**63))


def engine_config(config: dict) -> EngineConfig:
    known = {f.name for f in fields(EngineConfig)}
    unknown = sorted(set(config) - known)
    if unknown:
        raise InvalidRequestError(f"unknown engine option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    cfg = EngineConfig(**config)
    if cfg.quantization not in QUANTIZATIONS:
        raise InvalidRequestError(f"engine option quantization={cfg.quantization!r}: expected one of {QUANTIZATIONS}")
    if cfg.quantization and cfg.device != "cpu":
        raise InvalidRequestError("engine option quantization='int8' runs on the CPU only")
    if not hasattr(torch, cfg.dtype) or not isinstance(getattr(torch, cfg.dtype), torch.dtype):
        raise InvalidRequestError(f"engine option dtype={cfg.dtype!r}: expected a torch dtype name such as 'float32'")
    return cfg


class LLMEngine:
    def __init__(self, model: str = "default", **config: object) -> None:
        from lamina.engine.loader import load_model

        self.config = cfg = engine_config(config)
        torch.set_num_threads(cfg.num_threads or os.cpu_count() or 1)
        dtype = getattr(torch, cfg.dtype)
        loaded = load_model(model, dtype=torch.float32)
        self.model_name = model
        self.model_config = mc = loaded.config
        self.tokenizer = loaded.tokenizer
        self.max_model_len = min(cfg.max_model_len or mc.max_position_embeddings, mc.max_position_embeddings)
        with torch.device(cfg.device):
            self.model = LlamaForCausalLM(mc, max_positions=self.max_model_len)
        self.model.load_hf_weights(loaded.weights)
        self.model.to(dtype=dtype)
        self.model.rope.to(torch.float32)
        self.kernels = native_kernels() if cfg.native_kernels and cfg.device == "cpu" and dtype == torch.float32 else None
        self.linear_backend = self._choose_linears(loaded.quantized, dtype)
        if self.kernels is not None:
            self.model.use_native_ops(self.kernels)
        del loaded
        per_block = KVCache.bytes_per_block(mc.num_hidden_layers, cfg.block_size, mc.num_key_value_heads, mc.head_dim, dtype)
        num_blocks = cfg.num_kv_blocks or max(16, int(cfg.kv_cache_memory_gb * 2**30) // per_block)
        self.cache = KVCache(mc.num_hidden_layers, num_blocks, cfg.block_size, mc.num_key_value_heads, mc.head_dim, dtype, cfg.device)
        self.blocks = BlockManager(num_blocks, cfg.block_size, cfg.enable_prefix_caching)
        self.scheduler = Scheduler(self.blocks, cfg.max_num_seqs, cfg.max_num_batched_tokens)
        attention_kernels = self.kernels if mc.head_dim % 8 == 0 else None
        self.runner = ModelRunner(self.model, self.cache, cfg.block_size, attention_kernels)
        self.eos_token_ids = set(self.tokenizer.eos_token_ids) | set(mc.eos_token_ids)
        self.requests: dict[str, Request] = {}
        self.driver: object | None = None  # the AsyncEngine stepping this engine on its thread, if any
        self._ids = itertools.count()
        self._arrivals = itertools.count()

    def _choose_linears(self, quantized: dict, dtype: torch.dtype) -> str:
        """Swap the model's linears for the fastest exact CPU kind available; returns a line saying which."""
        cfg = self.config
        if cfg.quantization == "int8":
            replace_linears(self.model, Int8Linear)
            return "linears: int8 (fbgemm, lossy)"
        if cfg.device != "cpu" or dtype != torch.float32:
            return f"linears: torch {dtype} on {cfg.device}"
        kinds = []
        if self.kernels is not None and quantized:
            kinds.append(f"{use_block_quant_linears(self.model, quantized, self.kernels)} native from the file's quantized blocks")
        remaining = sum(isinstance(m, torch.nn.Linear) for m in self.model.modules())
        if remaining and cfg.pack_weights and packing_available():
            replace_linears(self.model, PackedLinear)
            kinds.append(f"{remaining} fp32 packed for oneDNN")
        elif remaining:
            kinds.append(f"{remaining} fp32 torch")
        return "linears: " + "; ".join(kinds)

    @property
    def num_free_blocks(self) -> int:
        return self.blocks.num_free_blocks

    @property
    def num_total_blocks(self) -> int:
        return self.blocks.num_blocks

    def has_unfinished_requests(self) -> bool:
        return bool(self.requests)

    def prepare_request(self, prompt: str | list[int], params: SamplingParams | None = None,
                        request_id: str | None = None) -> Request:
        """Tokenize and validate; safe to call from any thread."""
        params = params or SamplingParams()
        if not isinstance(params, SamplingParams):
            raise InvalidRequestError(f"sampling params must be SamplingParams, got {type(params).__name__}")
        if isinstance(prompt, str):
            text, ids = prompt, self.tokenizer.encode(prompt)
        elif isinstance(prompt, (list, tuple)) and all(isinstance(t, int) for t in prompt):
            text, ids = None, list(prompt)
        else:
            raise InvalidRequestError(f"prompt must be a string or a list of token ids, got {type(prompt).__name__}")
        if not ids:
            raise InvalidRequestError("prompt is empty")
        vocab = self.model_config.vocab_size
        if any(t < 0 or t >= vocab for t in ids):
            raise InvalidRequestError(f"prompt has token ids outside the vocabulary [0, {vocab})")
        if len(ids) >= self.max_model_len:
            raise InvalidRequestError(
                f"prompt has {len(ids)} tokens; the model's context is {self.max_model_len} tokens (max_model_len)"
            )
        if -(-(len(ids) + 1) // self.blocks.block_size) > self.blocks.num_blocks:
            raise InvalidRequestError(f"prompt of {len(ids)} tokens does not fit the KV pool of {self.blocks.num_blocks} blocks")
        return Request(request_id or f"req-{next(self._ids)}", text, ids, params)

    def submit(self, request: Request) -> None:
        if request.request_id in self.requests:
            raise InvalidRequestError(f"request id {request.request_id!r} is already running")
        params = request.params
        seed = params.seed if params.seed is not None else random.getrandbits(62)
        seq = Sequence(request.request_id, 0, list(request.prompt_token_ids), len(request.prompt_token_ids), params,
                       make_generator(seed, 0), seed, self.tokenizer.detokenizer(), arrival=next(self._arrivals),
                       fork_pending=params.n > 1, logprobs=[] if params.logprobs is not None else None)
        request.seqs.append(seq)
        self.requests[request.request_id] = request
        self.scheduler.add(seq)

    def add_request(self, prompt: str | list[int], params: SamplingParams | None = None,
                    request_id: str | None = None) -> str:
        request = self.prepare_request(prompt, params, request_id)
        self.submit(request)
        return request.request_id

    def abort(self, request_id: str) -> RequestOutput | None:
        request = self.requests.pop(request_id, None)
        if request is None:
            return None
        request.aborted = True
        for seq in request.seqs:
            if not seq.is_finished:
                seq.finish_reason = "abort"
                self.scheduler.finish(seq)
        return self._output(request)

    @torch.inference_mode()
    def step(self) -> list[RequestOutput]:
        batch = self.scheduler.schedule()
        if batch.is_empty:
            return []
        samplers, logits = self.runner.run(batch, self.blocks.take_pending_copies())
        for seq, chunk, _ in batch.prefills:
            seq.num_computed_tokens += chunk
            self.blocks.register_full_blocks(seq)
        for seq, _ in batch.decodes:
            seq.num_computed_tokens += 1
            self.blocks.register_full_blocks(seq)
        touched: dict[str, Request] = {}
        if samplers:
            samplers, logits = self._fork(samplers, logits)
            self._append(samplers, sample(logits, samplers, self.kernels))
            for seq in samplers:
                touched[seq.request_id] = self.requests[seq.request_id]
        outputs = []
        for request in touched.values():
            outputs.append(self._output(request))
            if request.finished:
                del self.requests[request.request_id]
        return outputs

    def _fork(self, samplers: list[Sequence], logits: torch.Tensor) -> tuple[list[Sequence], torch.Tensor]:
        """Parents whose prompt just finished prefilling spawn their n - 1 siblings, which share every block."""
        rows = list(range(len(samplers)))
        out = list(samplers)
        for row, parent in enumerate(samplers):
            if not parent.fork_pending:
                continue
            parent.fork_pending = False
            request = self.requests[parent.request_id]
            for index in range(1, parent.params.n):
                child = Sequence(parent.request_id, index, list(parent.token_ids), parent.num_prompt_tokens,
                                 parent.params, make_generator(parent.seed, index), parent.seed,
                                 self.tokenizer.detokenizer(), arrival=parent.arrival,
                                 logprobs=[] if parent.params.logprobs is not None else None)
                child.num_cached_tokens = parent.num_cached_tokens
                self.blocks.fork(parent, child)
                self.scheduler.add_running(child)
                request.seqs.append(child)
                out.append(child)
                rows.append(row)
        if len(out) == len(samplers):
            return samplers, logits
        return out, logits[torch.tensor(rows)]

    def _append(self, seqs: list[Sequence], result: SampleResult) -> None:
        for row, seq in enumerate(seqs):
            token = result.token_ids[row]
            seq.token_ids.append(token)
            if seq.logprobs is not None and result.logprobs is not None:
                k = seq.params.logprobs or 0
                top = {} if not k else dict(zip(result.top_ids[row][:k], result.top_logprobs[row][:k]))  # type: ignore[index]
                seq.logprobs.append(TokenLogprob(token, self.tokenizer.id_to_token(token), result.logprobs[row], top))
            self._check_stop(seq, token)
            if seq.finish_reason is not None:
                if not isinstance(seq.stop_reason, str):
                    seq.text += seq.detokenizer.flush()
                self.scheduler.finish(seq)

    def _check_stop(self, seq: Sequence, token: int) -> None:
        params = seq.params
        if token in params.stop_token_ids or (token in self.eos_token_ids and not params.ignore_eos):
            seq.finish_reason, seq.stop_reason = "stop", token
            return
        delta = seq.detokenizer.add(token)
        seq.text += delta
        for stop in params.stop:
            at = seq.text.find(stop, max(0, len(seq.text) - len(delta) - len(stop) + 1))
            if at >= 0:
                seq.text = seq.text[: at + len(stop)] if params.include_stop_str_in_output else seq.text[:at]
                seq.finish_reason, seq.stop_reason = "stop", stop
                return
        if seq.num_output_tokens >= params.max_tokens or len(seq.token_ids) >= self.max_model_len:
            seq.finish_reason = "length"

    def _output(self, request: Request) -> RequestOutput:
        hold = max((len(s) for s in request.params.stop), default=1) - 1
        outputs = []
        for seq in sorted(request.seqs, key=lambda s: s.index):
            text = seq.text if seq.finish_reason or not hold else seq.text[: max(0, len(seq.text) - hold)]
            logprobs = None if seq.logprobs is None else list(seq.logprobs)
            outputs.append(CompletionOutput(seq.index, text, seq.output_token_ids, logprobs,
                                            seq.finish_reason, seq.stop_reason))
        return RequestOutput(request.request_id, request.prompt, request.prompt_token_ids, outputs,
                             request.finished, request.seqs[0].num_cached_tokens)
