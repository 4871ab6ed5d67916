"""How a choice looks on the wire: chat (`message`/`delta`, logprobs.content) or text completion (`text`, token lists)."""
from __future__ import annotations

import codecs
from typing import Any, Protocol

from lamina.engine.outputs import TokenLogprob


class Vocab(Protocol):
    """The model's tokenizer as the formats need it (lamina.engine.tokenizer.Tokenizer is one)."""

    def id_to_token(self, token_id: int) -> str: ...

    def token_bytes(self, token_id: int) -> bytes: ...


class TextOffsets:
    """A choice's `text_offset`s: each token starts where the characters completed by the tokens before it end.

    A token holding part of a UTF-8 character adds no character; the one completing it adds it. Kept per choice
    across stream chunks.
    """

    __slots__ = ("chars", "_utf8")

    def __init__(self) -> None:
        self.chars = 0
        self._utf8 = codecs.getincrementaldecoder("utf-8")("replace")

    def advance(self, data: bytes) -> int:
        """The offset of a token with raw bytes `data`; moves past it."""
        at = self.chars
        self.chars += len(self._utf8.decode(data))
        return at


class ChatFormat:
    object = "chat.completion"
    chunk_object = "chat.completion.chunk"
    id_prefix = "chatcmpl-"

    def __init__(self, vocab: Vocab | None) -> None:
        self.vocab = vocab  # None: a target without logprobs (an architecture)

    def _entry(self, token_id: int, logprob: float, token: str | None = None) -> dict[str, Any]:
        assert self.vocab is not None, "logprobs need the model's vocabulary"
        text = self.vocab.id_to_token(token_id) if token is None else token
        return {"token": text, "logprob": logprob, "bytes": list(self.vocab.token_bytes(token_id))}

    def logprobs(self, items: list[TokenLogprob] | None, offsets: TextOffsets | None = None) -> dict[str, Any] | None:
        """OpenAI chat logprobs; each entry's `bytes` are its token's raw bytes (they join to the content's UTF-8)."""
        if items is None:
            return None
        content = []
        for lp in items:
            entry = self._entry(lp.token_id, lp.logprob, lp.token)
            entry["top_logprobs"] = [self._entry(t, v) for t, v in lp.top.items()]
            content.append(entry)
        return {"content": content, "refusal": None}

    def choice(self, index: int, text: str, logprobs: dict[str, Any] | None, finish_reason: str | None) -> dict[str, Any]:
        message = {"role": "assistant", "content": text, "refusal": None}
        return {"index": index, "message": message, "logprobs": logprobs, "finish_reason": finish_reason}

    def chunk_choice(self, index: int, delta: str, logprobs: dict[str, Any] | None, finish_reason: str | None,
                     first: bool) -> dict[str, Any]:
        message = {"role": "assistant", "content": delta} if first else ({"content": delta} if delta else {})
        return {"index": index, "delta": message, "logprobs": logprobs, "finish_reason": finish_reason}


class TextFormat(ChatFormat):
    object = "text_completion"
    chunk_object = "text_completion"
    id_prefix = "cmpl-"

    def logprobs(self, items: list[TokenLogprob] | None, offsets: TextOffsets | None = None) -> dict[str, Any] | None:
        """OpenAI completions logprobs; `offsets`: the choice's TextOffsets so far (a new one: from its start). An
        echoed first prompt token (logprob None) has token_logprob and top_logprobs null."""
        if items is None:
            return None
        assert self.vocab is not None, "logprobs need the model's vocabulary"
        offsets = offsets or TextOffsets()
        vocab = self.vocab
        return {"tokens": [lp.token for lp in items], "token_logprobs": [lp.logprob for lp in items],
                "top_logprobs": [None if lp.logprob is None else {vocab.id_to_token(t): v for t, v in lp.top.items()}
                                 for lp in items],
                "text_offset": [offsets.advance(vocab.token_bytes(lp.token_id)) for lp in items]}

    def choice(self, index: int, text: str, logprobs: dict[str, Any] | None, finish_reason: str | None) -> dict[str, Any]:
        return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}

    def chunk_choice(self, index: int, delta: str, logprobs: dict[str, Any] | None, finish_reason: str | None,
                     first: bool) -> dict[str, Any]:
        return self.choice(index, delta, logprobs, finish_reason)
