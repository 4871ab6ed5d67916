"""Backends on branches: what a step-level search (lamina.decoding) asks of a model.

    root = await backend.open_tree(messages)                      # the chat-templated conversation, prefilled
    steps = await backend.extend(root, SamplingParams(n=4, stop=["\\n"], include_stop_str_in_output=True))
    await backend.release(steps[0].handle)                        # a node the search drops
    await backend.tree_blocks([s.handle for s in steps])          # KV blocks held vs copy-per-path (local only)

A handle names a node of the tree: the conversation followed by the assistant's partial reply so far. `extend`
samples `params.n` one-step continuations of a node; each child is a node itself (its handle in `Step.handle`).
Every request made counts as a call in the backend's `usage` (an opening: its prompt tokens, no completion).

Implementations: `LocalBackend` on the engine's branch API (children share their parent's KV blocks
copy-on-write; lamina/engine/branches.py), `OpenAIBackend` by emulation (each extension is one
`/v1/chat/completions` request whose last message is the partial assistant reply, sent with vLLM's
`continue_final_message: true, add_generation_prompt: false`, which `lamina serve` accepts too; the server's prefix
cache does the sharing there).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

from lamina.backends.base import Messages, TokenLP
from lamina.engine.sampling_params import SamplingParams


@dataclass(slots=True)
class Step:
    """One child node. text: what this step added (with the stop string when the params include it);
    token_ids: its tokens where the backend returns them (local), else None; logprobs: the sampled tokens' (with
    top-k when asked), None when not returned; finish_reason: "stop" (a stop string, a stop token, EOS) or
    "length" (the step's max_tokens, or the context); num_tokens: tokens generated for it."""

    handle: str
    text: str
    token_ids: list[int] | None
    logprobs: list[TokenLP] | None
    finish_reason: str | None
    num_tokens: int


class Steps(list):
    """The children of one extension, plus what it cost: `requests` calls, `prompt_tokens` (cost as if nothing was
    cached), `cached_prompt_tokens` (of those, served from a KV/prefix cache), `seconds` of wall time."""

    def __init__(self, items=(), prompt_tokens: int = 0, cached_prompt_tokens: int = 0, requests: int = 1,
                 seconds: float = 0.0) -> None:
        super().__init__(items)
        self.prompt_tokens = prompt_tokens
        self.cached_prompt_tokens = cached_prompt_tokens
        self.requests = requests
        self.seconds = seconds

    @property
    def completion_tokens(self) -> int:
        return sum(s.num_tokens for s in self)


@dataclass(frozen=True, slots=True)
class TreeBlocks:
    """KV blocks held by a set of nodes: distinct blocks used, against the blocks a copy per path would hold."""

    num_used_blocks: int
    num_copy_per_path_blocks: int


class Branching(ABC):
    """The branch interface of a backend (a mix-in of Backend subclasses that support step-level search)."""

    @abstractmethod
    async def open_tree(self, messages: Messages) -> str:
        """The root handle of a tree for this conversation (chat template, generation prompt added)."""

    @abstractmethod
    async def extend(self, handle: str, params: SamplingParams) -> Steps:
        """`params.n` one-step children of the node (InvalidRequestError: unknown or released handle)."""

    @abstractmethod
    async def release(self, handle: str) -> None:
        """Forget a node (its children stay valid)."""

    async def tree_blocks(self, handles: list[str]) -> TreeBlocks | None:
        """KV blocks these nodes hold, where the backend knows (None otherwise)."""
        return None
