"""How a choice looks on the wire: chat (`message`/`delta`, logprobs.content) or text completion (`text`, token lists)."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lamina.engine.outputs import TokenLogprob

TokenText = Callable[[int], str]


def _entry(token: str, logprob: float) -> dict[str, Any]:
    return {"token": token, "logprob": logprob, "bytes": list(token.encode("utf-8", "replace"))}


class ChatFormat:
    object = "chat.completion"
    chunk_object = "chat.completion.chunk"
    id_prefix = "chatcmpl-"

    def __init__(self, token_text: TokenText) -> None:
        self.token_text = token_text

    def logprobs(self, items: list[TokenLogprob] | None, text_offset: int = 0) -> dict[str, Any] | None:
        if items is None:
            return None
        content = []
        for lp in items:
            entry = _entry(self.token_text(lp.token_id), lp.logprob)
            entry["top_logprobs"] = [_entry(self.token_text(t), v) for t, v in lp.top.items()]
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

    def logprobs(self, items: list[TokenLogprob] | None, text_offset: int = 0) -> dict[str, Any] | None:
        if items is None:
            return None
        tokens = [self.token_text(lp.token_id) for lp in items]
        offsets, at = [], text_offset
        for token in tokens:
            offsets.append(at)
            at += len(token)
        return {"tokens": tokens, "token_logprobs": [lp.logprob for lp in items],
                "top_logprobs": [{self.token_text(t): v for t, v in lp.top.items()} for lp in items],
                "text_offset": offsets}

    def choice(self, index: int, text: str, logprobs: dict[str, Any] | None, finish_reason: str | None) -> dict[str, Any]:
        return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}

    def chunk_choice(self, index: int, delta: str, logprobs: dict[str, Any] | None, finish_reason: str | None,
                     first: bool) -> dict[str, Any]:
        return self.choice(index, delta, logprobs, finish_reason)
