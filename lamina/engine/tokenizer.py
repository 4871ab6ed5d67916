"""Tokenizer: a `tokenizers` backend plus chat template, stop tokens and an incremental detokenizer."""
from __future__ import annotations

import re
from functools import lru_cache
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from lamina.errors import InvalidRequestError, LaminaError

if TYPE_CHECKING:
    import jinja2
    from tokenizers import Tokenizer as Backend

_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")
TURN_END_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|eom_id|>", "<|endoftext|>")


class Tokenizer:
    __slots__ = ("backend", "chat_template", "bos_token", "eos_token", "bos_token_id", "eos_token_ids",
                 "add_bos_token", "source", "_template", "_display", "_special_ids", "_byte_level")

    def __init__(self, backend: "Backend", *, chat_template: str | None, bos_token: str | None, eos_token: str | None,
                 extra_eos_ids: Sequence[int] = (), add_bos_token: bool = False, source: str = "<tokenizer>") -> None:
        self.backend = backend
        self.chat_template = chat_template
        self.bos_token, self.eos_token = bos_token, eos_token
        self.bos_token_id = backend.token_to_id(bos_token) if bos_token else None
        self.add_bos_token = add_bos_token
        self.source = source
        self.eos_token_ids = self._stop_ids(extra_eos_ids)
        self._template: "jinja2.Template | None" = None
        self._display: dict[int, str] = {}
        self._special_ids = frozenset(backend.get_added_tokens_decoder())
        self._byte_level = type(backend.decoder).__name__ == "ByteLevel"

    def _stop_ids(self, extra: Sequence[int]) -> list[int]:
        ids = [self.backend.token_to_id(self.eos_token)] if self.eos_token else []
        ids += list(extra)
        template = self.chat_template or ""
        ids += [self.backend.token_to_id(t) for t in TURN_END_TOKENS if t in template]
        return list(dict.fromkeys(i for i in ids if i is not None))

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        if not isinstance(text, str):
            raise InvalidRequestError(f"prompt must be a string, got {type(text).__name__}")
        ids = self.backend.encode(text, add_special_tokens=add_special_tokens).ids
        if add_special_tokens and self.add_bos_token and self.bos_token_id is not None and ids[:1] != [self.bos_token_id]:
            ids.insert(0, self.bos_token_id)
        return ids

    def encode_prompt(self, text: str) -> list[int]:
        """The ids a text prompt runs as: BOS first when the model's tokenizer asks for it (GGUF add_bos_token, e.g.
        Gemma; not SmolLM2), as vLLM does; a chat template that writes the BOS itself is not given a second one."""
        return self.encode(text, add_special_tokens=self.add_bos_token)

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def id_to_token(self, token_id: int) -> str:
        text = self._display.get(token_id)
        if text is None:
            text = self._display[token_id] = self.backend.decode([token_id], skip_special_tokens=False)
        return text

    def token_bytes(self, token_id: int) -> bytes:
        """The raw bytes one token stands for (a byte-level piece may be part of a UTF-8 character)."""
        piece = self.backend.id_to_token(token_id)
        if piece is None:
            return b""
        if token_id in self._special_ids:
            return piece.encode("utf-8")
        to_byte = unicode_to_byte()
        if self._byte_level and all(c in to_byte for c in piece):
            return bytes(to_byte[c] for c in piece)
        match = _BYTE_PIECE.fullmatch(piece)
        return bytes([int(match.group(1), 16)]) if match else piece.replace("\u2581", " ").encode("utf-8")

    def token_to_id(self, token: str) -> int | None:
        return self.backend.token_to_id(token)

    def apply_chat_template(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True,
                            continue_final_message: bool = False, **extra: Any) -> str:
        """The prompt text: the model's chat template, or for a model without one (a base model such as gemma3-270m)
        the plain-prompt rule of `plain_prompt`. `continue_final_message` (vLLM's): the last message is left open, so the model continues
        its text (rendered without a generation prompt, then cut right after that message's content); it excludes
        `add_generation_prompt` (InvalidRequestError)."""
        import jinja2

        messages = _plain_messages(messages)
        if continue_final_message and add_generation_prompt:
            raise InvalidRequestError("continue_final_message and add_generation_prompt cannot both be true")
        if not self.chat_template:
            text = plain_prompt(messages, add_generation_prompt)
        else:
            try:
                text = self._compiled().render(messages=messages, add_generation_prompt=add_generation_prompt,
                                               bos_token=self.bos_token or "", eos_token=self.eos_token or "", **extra)
            except (jinja2.TemplateError, TypeError, ValueError, KeyError, AttributeError) as exc:
                raise InvalidRequestError(f"{self.source}: chat template rejected the messages: {exc}") from None
        if continue_final_message:
            final = messages[-1]["content"]
            at = text.rfind(final) if final else -1
            if final and at < 0:
                final = final.strip()  # some templates trim the content
                at = text.rfind(final)
            if at < 0:
                raise InvalidRequestError("continue_final_message: the chat template does not render the final "
                                          "message's content verbatim")
            text = text[: at + len(final)]
        return text

    def _compiled(self) -> "jinja2.Template":
        import jinja2

        if self._template is None:
            try:
                self._template = _environment().from_string(self.chat_template)
            except jinja2.TemplateSyntaxError as exc:
                raise LaminaError(f"{self.source}: invalid chat template (line {exc.lineno}): {exc.message}") from None
        return self._template

    def detokenizer(self) -> "Detokenizer":
        return Detokenizer(self)


class Detokenizer:
    """Streams text as tokens arrive, holding back incomplete UTF-8; the deltas concatenate to decode(ids)."""

    __slots__ = ("tokenizer", "ids", "prefix_offset", "read_offset", "text")

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.prefix_offset = self.read_offset = 0
        self.text = ""

    def prime(self, context: list[int]) -> None:
        """Continue after `context` (tokens already shown): later deltas are spaced and joined as in decode(all)."""
        self.ids = list(context)
        self.prefix_offset, self.read_offset = 0, len(self.ids)

    def add(self, token_id: int) -> str:
        self.ids.append(token_id)
        decode = self.tokenizer.decode
        prefix = decode(self.ids[self.prefix_offset : self.read_offset])
        window = decode(self.ids[self.prefix_offset :])
        if len(window) <= len(prefix) or window.endswith("\ufffd"):
            return ""
        delta = window[len(prefix) :]
        self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
        self.text += delta
        return delta

    def flush(self) -> str:
        """Whatever is held back (a trailing partial character, as U+FFFD) once no more tokens will come."""
        prefix = self.tokenizer.decode(self.ids[self.prefix_offset : self.read_offset])
        delta = self.tokenizer.decode(self.ids[self.prefix_offset :])[len(prefix) :]
        self.prefix_offset = self.read_offset = len(self.ids)
        self.text += delta
        return delta


@lru_cache(maxsize=1)
def byte_to_unicode() -> dict[int, str]:
    """GPT-2's byte-level alphabet: every byte spelled as a printable character."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    mapping, extra = {b: chr(b) for b in printable}, 0
    for b in range(256):
        if b not in mapping:
            mapping[b], extra = chr(256 + extra), extra + 1
    return mapping


@lru_cache(maxsize=1)
def unicode_to_byte() -> dict[str, int]:
    return {c: b for b, c in byte_to_unicode().items()}


def plain_prompt(messages: list[dict[str, Any]], add_generation_prompt: bool) -> str:
    """The plain-prompt rule for models without a chat template: one paragraph per message, a system message as its
    bare text, any other as "Role: content" ("User: ...", "Assistant: ..."), then "Assistant:" when a generation
    prompt is asked for. E.g. [user "What is 2 + 2?"] -> "User: What is 2 + 2?\n\nAssistant:". A base model may go on
    to write the next "User:" turn; a `stop` of "\nUser:" ends its reply there."""
    parts = [m["content"] if m["role"] == "system" else f"{m['role'].capitalize()}: {m['content']}" for m in messages]
    return "\n\n".join(parts + ["Assistant:"] * add_generation_prompt)


def _plain_messages(messages: Any) -> list[dict[str, Any]]:
    """Validated copies; OpenAI content-part lists become their joined text, None content becomes ""."""
    if not isinstance(messages, list) or not messages:
        raise InvalidRequestError(f"messages must be a non-empty list of {{'role', 'content'}} dicts, got {messages!r:.80}")
    plain = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or "content" not in m:
            raise InvalidRequestError(f"messages[{i}] must be a dict with string 'role' and 'content', got {m!r:.80}")
        plain.append({**m, "content": _text(m["content"], i)})
    return plain


def _text(content: Any, i: int) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                                         for p in content):
        return "".join(p["text"] for p in content)
    raise InvalidRequestError(f"messages[{i}].content must be a string or a list of text parts, got {content!r:.80}")


@lru_cache(maxsize=1)
def _environment() -> "jinja2.Environment":
    import json
    from datetime import datetime

    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise jinja2.TemplateError(message)

    def tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None,
               sort_keys: bool = False) -> str:
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env
