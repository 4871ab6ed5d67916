"""Build a `tokenizers` backend from GGUF tokenizer metadata (byte-level BPE "gpt2" and sentencepiece BPE "llama")."""
from __future__ import annotations

from tokenizers import AddedToken, Regex, decoders, pre_tokenizers
from tokenizers import Tokenizer as Backend
from tokenizers.models import BPE

from lamina.engine.loader.gguf_reader import GGUFFile
from lamina.engine.tokenizer import Tokenizer, byte_to_unicode
from lamina.errors import ModelLoadError, UnsupportedModelError

CONTROL, USER_DEFINED = 3, 4

_LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
           r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
          r"|\s*[\r\n]+|\s+(?!\S)|\s+")
SPLIT_BY_PRE = {
    **dict.fromkeys(("llama3", "llama-v3", "llama-bpe", "falcon3", "smaug-bpe", "dbrx", "pixtral"), _LLAMA3),
    **dict.fromkeys(("qwen2", "deepseek-r1-qwen"), _QWEN2),
}


def tokenizer_from_gguf(gguf: GGUFFile) -> Tokenizer:
    meta = gguf.metadata
    tokens = meta.get("tokenizer.ggml.tokens")
    if not tokens:
        raise ModelLoadError(f"{gguf.path}: GGUF has no tokenizer (metadata 'tokenizer.ggml.tokens' is missing)")
    kind = meta.get("tokenizer.ggml.model")
    types = meta.get("tokenizer.ggml.token_type") or [1] * len(tokens)
    if kind == "gpt2":
        backend = _byte_level(tokens, meta.get("tokenizer.ggml.merges") or [], meta.get("tokenizer.ggml.pre"))
    elif kind == "llama":
        backend = _sentencepiece(tokens, meta.get("tokenizer.ggml.merges"), meta.get("tokenizer.ggml.scores"),
                                 space_prefix=bool(meta.get("tokenizer.ggml.add_space_prefix", True)))
    else:
        raise UnsupportedModelError(f"{gguf.path}: unsupported tokenizer.ggml.model {kind!r}; supported: gpt2, llama")
    _add_special(backend, tokens, types, byte_level=kind == "gpt2")

    def token(key: str) -> str | None:
        i = meta.get(f"tokenizer.ggml.{key}")
        return tokens[i] if isinstance(i, int) and 0 <= i < len(tokens) else None

    add_bos = meta.get("tokenizer.ggml.add_bos_token", kind == "llama")
    return Tokenizer(backend, chat_template=meta.get("tokenizer.chat_template"), bos_token=token("bos_token_id"),
                     eos_token=token("eos_token_id"), extra_eos_ids=[meta[k] for k in ("tokenizer.ggml.eot_token_id",) if k in meta],
                     add_bos_token=bool(add_bos), source=str(gguf.path))


def _byte_level(tokens: list[str], merges: list[str], pre: str | None) -> Backend:
    spelling = byte_to_unicode()
    alphabet = set(spelling.values())
    if alphabet.issuperset("".join(tokens)):  # as llama.cpp writes them: all spelled byte-level already (fast path)
        vocab = dict(zip(tokens, range(len(tokens))))
    else:
        vocab = {(t if set(t) <= alphabet else "".join(spelling[b] for b in t.encode("utf-8"))): i
                 for i, t in enumerate(tokens)}
    backend = Backend(BPE(vocab=vocab, merges=[tuple(m.split(" ", 1)) for m in merges], dropout=None,
                          continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False))
    split = SPLIT_BY_PRE.get(pre or "")
    if split is None:
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    else:
        backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(split), behavior="isolated"),
                                                         pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    backend.decoder = decoders.ByteLevel()
    return backend


def _sentencepiece(tokens: list[str], merges: list[str] | None, scores: list[float] | None,
                   space_prefix: bool = True) -> Backend:
    """SentencePiece BPE; `space_prefix` (GGUF's add_space_prefix; False for Gemma): a space is put before the text."""
    vocab = {t: i for i, t in enumerate(tokens)}
    if merges:
        pairs = [tuple(m.split(" ", 1)) for m in merges]
    else:
        pairs = _merges_from_scores(vocab, scores or [0.0] * len(tokens))
    backend = Backend(BPE(vocab=vocab, merges=pairs, fuse_unk=True, byte_fallback=True, dropout=None, unk_token=tokens[0]))
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first" if space_prefix else "never",
                                                     split=False)
    steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    backend.decoder = decoders.Sequence(steps + [decoders.Strip(content=" ", left=1)] if space_prefix else steps)
    return backend


def _merges_from_scores(vocab: dict[str, int], scores: list[float]) -> list[tuple[str, str]]:
    ranked = []
    for token, index in vocab.items():
        pieces = [(token[:cut], token[cut:]) for cut in range(1, len(token))]
        pieces = sorted((p for p in pieces if p[0] in vocab and p[1] in vocab), key=lambda p: (vocab[p[0]], vocab[p[1]]))
        ranked += [(left, right, scores[index]) for left, right in pieces]
    ranked.sort(key=lambda m: (m[2], len(m[0]), len(m[1])), reverse=True)
    return [(left, right) for left, right, _ in ranked]


def _add_special(backend: Backend, tokens: list[str], types: list[int], byte_level: bool) -> None:
    alphabet = set(byte_to_unicode().values()) if byte_level else None
    control = [AddedToken(t, normalized=False, special=True) for t, k in zip(tokens, types)
               if k == CONTROL and (alphabet is None or set(t) <= alphabet)]
    user = [AddedToken(t, normalized=False, special=False) for t, k in zip(tokens, types)
            if k == USER_DEFINED and backend.token_to_id(t) is not None]
    if control:
        backend.add_special_tokens(control)
    if user:
        backend.add_tokens(user)
