"""The public engine API: `LLM` (offline, batched, like vLLM's) and `AsyncEngine` (streaming, many callers)."""
from __future__ import annotations

import asyncio
import gc
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence as Seq
from dataclasses import dataclass
from typing import Any

# The engine's imports (torch, numpy, gguf, tokenizers) make ~170k long-lived objects, over which the cyclic
# collector ran three full passes (and 380 younger ones) while they were imported: 0.3-0.6 s of a 1-3 s import here,
# collecting nothing. So the collector waits, and the objects are then put straight into its oldest generation
# (freeze, then unfreeze: two list splices, no pass over them), where they stay collectable; merely waiting moved
# the passes into LLM(). Not when the program froze objects of its own before (gc.freeze, e.g. before forking
# workers): unfreeze would release those too.
_collecting, _host_frozen = gc.isenabled(), gc.get_freeze_count()
gc.disable()
try:
    import torch

    from lamina.engine.branches import BlockUsage, BranchOutput
    from lamina.engine.llm_engine import LLMEngine
    from lamina.engine.outputs import OutputKind, RequestOutput
    from lamina.engine.request import Request
    from lamina.engine.sampling_params import SamplingParams
    from lamina.errors import InvalidRequestError, LaminaError
finally:
    if not _host_frozen:
        gc.freeze()
        gc.unfreeze()
    if _collecting:
        gc.enable()

Messages = list[dict[str, str]]


def _batch(prompts: str | list[int] | Seq[str | list[int]]) -> list[str | list[int]]:
    """One prompt (a text or token ids) or many, as a list of prompts."""
    if isinstance(prompts, str) or (isinstance(prompts, list) and prompts and isinstance(prompts[0], int)):
        return [prompts]  # type: ignore[list-item]
    return list(prompts)  # type: ignore[arg-type]


class LLM:
    """`LLM(model="default")`; `generate(prompts, params)` and `chat(messages, params)` return RequestOutputs."""

    def __init__(self, model: str = "default", **config: object) -> None:
        self.engine = LLMEngine(model, **config)

    @property
    def tokenizer(self):
        return self.engine.tokenizer

    def generate(self, prompts: str | list[int] | Seq[str | list[int]],
                 sampling_params: SamplingParams | Seq[SamplingParams] | None = None,
                 use_tqdm: bool = False) -> list[RequestOutput]:
        prompts = _batch(prompts)
        params = sampling_params if isinstance(sampling_params, (list, tuple)) else [sampling_params] * len(prompts)
        if len(params) != len(prompts):
            raise InvalidRequestError(f"got {len(params)} SamplingParams for {len(prompts)} prompts")
        requests = [self.engine.prepare_request(p, sp, output_kind=OutputKind.FINAL_ONLY) for p, sp in zip(prompts, params)]
        for request in requests:
            self.engine.submit(request)
        return self._run([r.request_id for r in requests], use_tqdm)

    def chat(self, messages: Messages | Seq[Messages], sampling_params: SamplingParams | None = None,
             use_tqdm: bool = False) -> list[RequestOutput]:
        conversations = [messages] if messages and isinstance(messages[0], dict) else list(messages)  # type: ignore[index]
        prompts = [self.tokenizer.apply_chat_template(c, add_generation_prompt=True) for c in conversations]
        return self.generate(prompts, sampling_params, use_tqdm)

    def hidden_states(self, prompts: str | list[int] | Seq[str | list[int]], layers: list[int],
                      positions: list[list[int]] | None = None) -> torch.Tensor:
        """[batch, len(layers), P, hidden] float32 tensor of the prompts' states from the loaded model (no second
        load; see LLMEngine.hidden_states for layers, positions and errors). LaminaError while an AsyncEngine
        drives this engine (ask that one)."""
        self._check_driver()
        return self.engine.hidden_states(_batch(prompts), layers, positions)

    def branch_hidden_states(self, branch_ids: str | list[str], layers: list[int],
                             positions: list[list[int]] | None = None) -> torch.Tensor:
        """The states of parked branches' tokens (LLMEngine.branch_hidden_states)."""
        self._check_driver()
        return self.engine.branch_hidden_states(branch_ids, layers, positions)

    # Branches (lamina/engine/branches.py), each call run to completion; the engine's methods say more.

    def open_branch(self, prompt: str | list[int], branch_id: str | None = None) -> BranchOutput:
        self._check_driver()
        branch_id = self.engine.open_branch(prompt, branch_id)
        self._run_branch(branch_id)
        return self.engine.branch(branch_id)

    def extend_branch(self, branch_id: str, params: SamplingParams | None = None) -> list[BranchOutput]:
        """The branch's `params.n` children, each one more step (up to a stop or max_tokens)."""
        self._check_driver()
        extension = self.engine.extend_branch(branch_id, params)
        self._run_branch(extension.request_id)
        return [self.engine.branch(b) for b in extension.branch_ids if b in self.engine.branches.branches]

    def branch(self, branch_id: str) -> BranchOutput:
        self._check_driver()
        return self.engine.branch(branch_id)

    def release_branch(self, branch_id: str) -> None:
        self._check_driver()
        self.engine.release_branch(branch_id)

    def branch_blocks(self, branch_ids: list[str] | None = None) -> BlockUsage:
        self._check_driver()
        return self.engine.branch_blocks(branch_ids)

    def _run_branch(self, key: str) -> None:
        try:
            while self.engine.is_branch_pending(key):
                self.engine.step()
        except BaseException:
            if key in self.engine.requests:
                self.engine.abort(key)
            self.engine.fail_pending_branches()  # an opening is no request: forget it, or it stays scheduled
            raise

    def _check_driver(self) -> None:
        if self.engine.driver is not None:
            raise LaminaError("this LLM's engine is driven by an AsyncEngine now; generate through that instead")

    def _run(self, request_ids: list[str], use_tqdm: bool) -> list[RequestOutput]:
        if self.engine.driver is not None:
            for request_id in request_ids:
                self.engine.abort(request_id)
            self._check_driver()
        finished: dict[str, RequestOutput] = {}
        bar = _progress(len(request_ids)) if use_tqdm else None
        tokens, start = 0, time.perf_counter()
        try:
            while self.engine.has_unfinished_requests():
                for out in self.engine.step():
                    if out.finished:
                        finished[out.request_id] = out
                        tokens += out.num_completion_tokens
                        if bar is not None:
                            bar.set_postfix_str(f"{tokens / (time.perf_counter() - start):.1f} tok/s")
                            bar.update(1)
        except BaseException:
            for request_id in request_ids:
                self.engine.abort(request_id)
            raise
        finally:
            if bar is not None:
                bar.close()
        return [finished[r] for r in request_ids]


def _progress(total: int):
    from tqdm import tqdm

    return tqdm(total=total, desc="generate", unit="req", dynamic_ncols=True)


@dataclass(slots=True)
class _Stream:
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue


class AsyncEngine:
    """Runs an LLMEngine on a background thread; `generate` streams RequestOutputs (deltas by default) to any number
    of tasks."""

    def __init__(self, model: str = "default", **config: object) -> None:
        self._start(LLMEngine(model, **config))

    @classmethod
    def from_llm(cls, llm: LLM) -> "AsyncEngine":
        self = cls.__new__(cls)
        self._start(llm.engine)
        return self

    def _start(self, engine: LLMEngine) -> None:
        if engine.driver is not None:
            raise LaminaError("this engine is already driven by another AsyncEngine")
        engine.driver = self
        self.engine = engine
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self._streams: dict[str, _Stream] = {}
        self._waiters: list[tuple[str, Callable[[], Any], _Stream]] = []  # (pending key, result, caller)
        self._wake = threading.Event()
        self._stopped = False
        self._thread = threading.Thread(target=self._loop, name="lamina-engine", daemon=True)
        self._thread.start()

    @property
    def tokenizer(self):
        return self.engine.tokenizer

    @property
    def model_name(self) -> str:
        return self.engine.model_name

    def stats(self) -> dict[str, int]:
        scheduler = self.engine.scheduler
        return {
            "num_free_blocks": self.engine.num_free_blocks,
            "num_total_blocks": self.engine.num_total_blocks,
            "num_running": len(scheduler.running),
            "num_waiting": len(scheduler.waiting),
            "num_requests": len(self._streams),
        }

    async def generate(self, prompt: str | list[int], params: SamplingParams | None = None,
                       request_id: str | None = None,
                       output_kind: OutputKind = OutputKind.DELTA) -> AsyncIterator[RequestOutput]:
        """The request's outputs as the engine steps, the last one with `finished` set.

        By default each is a DELTA: only the samples that changed, each with its new token ids and logprobs and the
        text newly released (text that could still become a stop string stays back until it cannot); a sample's
        deltas concatenate to its final output (`DeltaJoiner` joins them). `OutputKind.CUMULATIVE` yields every
        sample's output so far instead, `OutputKind.FINAL_ONLY` only the final one. Raises InvalidRequestError for a
        bad prompt or params; leaving the loop early aborts the request.
        """
        request = self.engine.prepare_request(prompt, params, request_id, output_kind)
        if request.request_id in self._streams:
            raise InvalidRequestError(f"request id {request.request_id!r} is already running")
        stream = _Stream(asyncio.get_running_loop(), asyncio.Queue())
        self._streams[request.request_id] = stream
        self._send(("add", request))
        finished = False
        try:
            while not finished:
                item = await stream.queue.get()
                if isinstance(item, BaseException):
                    raise item
                finished = item.finished
                yield item
        finally:
            self._streams.pop(request.request_id, None)
            if not finished:
                self._send(("abort", request.request_id))

    async def abort(self, request_id: str) -> None:
        self._send(("abort", request_id))

    # Branches (lamina/engine/branches.py): each call runs on the engine thread; see LLMEngine's methods.

    async def open_branch(self, prompt: str | list[int], branch_id: str | None = None) -> BranchOutput:
        def start() -> tuple[str, Callable[[], BranchOutput]]:
            opened = self.engine.open_branch(prompt, branch_id)
            return opened, lambda: self.engine.branch(opened)
        return await self._on_engine(start)

    async def extend_branch(self, branch_id: str, params: SamplingParams | None = None) -> list[BranchOutput]:
        """The branch's `params.n` children, each one more step; cancelling the call aborts the extension (its
        children are released)."""
        started: list[str] = []

        def start() -> tuple[str, Callable[[], list[BranchOutput]]]:
            extension = self.engine.extend_branch(branch_id, params)
            started.append(extension.request_id)
            return extension.request_id, lambda: [self.engine.branch(b) for b in extension.branch_ids
                                                  if b in self.engine.branches.branches]
        try:
            return await self._on_engine(start)
        except asyncio.CancelledError:
            for request_id in started:
                self._send(("abort", request_id))
            raise

    async def branch(self, branch_id: str) -> BranchOutput:
        return await self._on_engine(lambda: ("", lambda: self.engine.branch(branch_id)))

    async def release_branch(self, branch_id: str) -> None:
        return await self._on_engine(lambda: ("", lambda: self.engine.release_branch(branch_id)))

    async def branch_blocks(self, branch_ids: list[str] | None = None) -> BlockUsage:
        return await self._on_engine(lambda: ("", lambda: self.engine.branch_blocks(branch_ids)))

    async def hidden_states(self, prompts: str | list[int] | Seq[str | list[int]], layers: list[int],
                            positions: list[list[int]] | None = None) -> torch.Tensor:
        """LLM.hidden_states, computed on the engine thread between steps (the streams wait for the whole forward:
        keep the batch small beside live requests)."""
        return await self._on_engine(lambda: ("", lambda: self.engine.hidden_states(_batch(prompts), layers,
                                                                                     positions)))

    async def branch_hidden_states(self, branch_ids: str | list[str], layers: list[int],
                                   positions: list[list[int]] | None = None) -> torch.Tensor:
        """LLM.branch_hidden_states, computed on the engine thread between steps."""
        return await self._on_engine(lambda: ("", lambda: self.engine.branch_hidden_states(branch_ids, layers,
                                                                                            positions)))

    async def _on_engine(self, start: Callable[[], tuple[str, Callable[[], Any]]]) -> Any:
        """Run start() on the engine thread: (a pending key, "" for none; what to answer once it is settled)."""
        stream = _Stream(asyncio.get_running_loop(), asyncio.Queue())
        self._send(("branch", (start, stream)))
        item = await stream.queue.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def shutdown(self) -> None:
        self._stopped = True
        self._wake.set()
        self._thread.join(timeout=10)
        self.engine.driver = None

    def _send(self, command: tuple[str, object]) -> None:
        self._commands.put(command)
        self._wake.set()

    def _loop(self) -> None:
        while not self._stopped:
            self._drain_commands()
            if not self.engine.has_unfinished_requests():
                self._wake.wait(timeout=0.5)
                self._wake.clear()
                continue
            try:
                outputs = self.engine.step()
            except Exception as exc:  # a failed step fails its requests and branch work, never the loop
                failed = {request_id for request_id in self.engine.requests if self.engine.is_branch_pending(request_id)}
                for request_id in list(self.engine.requests):
                    self.engine.abort(request_id)
                    self._deliver_error(request_id, exc)
                failed.update(self.engine.fail_pending_branches())
                self._fail_waiters(failed, exc)
                continue
            for out in outputs:
                self._deliver(out)
            if self._waiters:
                self._answer_waiters()

    def _drain_commands(self) -> None:
        while True:
            try:
                kind, arg = self._commands.get_nowait()
            except queue.Empty:
                return
            if kind == "add":
                assert isinstance(arg, Request)
                try:
                    self.engine.submit(arg)
                except Exception as exc:
                    self._deliver_error(arg.request_id, exc)
            elif kind == "abort":
                out = self.engine.abort(str(arg))
                if out is not None:
                    self._deliver(out)
            elif kind == "branch":
                start, stream = arg  # type: ignore[misc]
                try:
                    self._waiters.append((*start(), stream))
                except Exception as exc:
                    stream.loop.call_soon_threadsafe(stream.queue.put_nowait, exc)
                self._answer_waiters()

    def _fail_waiters(self, keys: set[str], exc: BaseException) -> None:
        """Answer the callers waiting on these branch openings or extensions with the step's error."""
        waiting = []
        for key, answer, stream in self._waiters:
            if key in keys:
                stream.loop.call_soon_threadsafe(stream.queue.put_nowait, exc)
            else:
                waiting.append((key, answer, stream))
        self._waiters = waiting

    def _answer_waiters(self) -> None:
        waiting = []
        for key, answer, stream in self._waiters:
            if key and self.engine.is_branch_pending(key):
                waiting.append((key, answer, stream))
                continue
            try:
                item = answer()
            except Exception as exc:
                item = exc
            stream.loop.call_soon_threadsafe(stream.queue.put_nowait, item)
        self._waiters = waiting

    def _deliver(self, out: RequestOutput) -> None:
        stream = self._streams.get(out.request_id)
        if stream is not None:
            stream.loop.call_soon_threadsafe(stream.queue.put_nowait, out)

    def _deliver_error(self, request_id: str, exc: BaseException) -> None:
        stream = self._streams.get(request_id)
        if stream is not None:
            stream.loop.call_soon_threadsafe(stream.queue.put_nowait, exc)
