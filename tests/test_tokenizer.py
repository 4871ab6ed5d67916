"""Tokenizer: encode/decode/chat template equal transformers' tokenizer from the same GGUF; streaming detokenizer."""
from __future__ import annotations

import numpy as np
import pytest
from gguf import GGUFWriter

from lamina.engine.loader import load_model
from lamina.engine.loader.gguf_reader import GGUFFile
from lamina.engine.loader.gguf_tokenizer import tokenizer_from_gguf
from lamina.engine.tokenizer import Tokenizer
from lamina.errors import InvalidRequestError, LaminaError

TEXTS = [
    "Hello world!",
    "  leading spaces,\ttabs\t\tand\n\n\nnewlines  ",
    "héllo café naïve ﬁ — “quotes” ‘single’",
    "emoji 😀👍🏽 family 👨‍👩‍👧 flags 🇫🇷",
    "数字 123456789 日本語のテキスト 한국어 العربية",
    "<|im_start|>user\nhi<|im_end|>\n<|endoftext|>",
    "def f(x):\n    return x ** 2  # comment\n",
    "I'm, you're, they'll've DON'T",
]
CONVERSATIONS = [
    [{"role": "user", "content": "What is 2+2?"}],
    [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "hi"},
     {"role": "assistant", "content": "Hello! 😀"}, {"role": "user", "content": "Again, in 日本語"}],
]


@pytest.fixture(scope="module")
def tok(real_model_path) -> Tokenizer:
    """The embedded GGUF's tokenizer, as load_model builds it, without loading the weights."""
    return tokenizer_from_gguf(GGUFFile.open(real_model_path))


@pytest.fixture(scope="module")
def hf_tok(hf_smollm2_tokenizer):
    return hf_smollm2_tokenizer


@pytest.mark.parametrize("text", TEXTS)
def test_encode_and_decode_equal_transformers(tok, hf_tok, text):
    ids = tok.encode(text)
    assert ids == hf_tok.encode(text, add_special_tokens=False)
    assert tok.decode(ids) == hf_tok.decode(ids, skip_special_tokens=True)
    assert tok.decode(ids, skip_special_tokens=False) == hf_tok.decode(ids, skip_special_tokens=False)


def test_special_tokens_stay_whole(tok):
    assert tok.encode("<|im_start|>user<|im_end|>") == [1, tok.encode("user")[0], 2]
    assert tok.decode([1, 2]) == "" and tok.decode([1, 2], skip_special_tokens=False) == "<|im_start|><|im_end|>"


@pytest.mark.parametrize("conversation", CONVERSATIONS, ids=["one-turn", "multi-turn"])
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_chat_template_equals_transformers(tok, hf_tok, conversation, add_generation_prompt):
    ours = tok.apply_chat_template(conversation, add_generation_prompt=add_generation_prompt)
    assert ours == hf_tok.apply_chat_template(conversation, tokenize=False, add_generation_prompt=add_generation_prompt)
    assert ours.endswith("<|im_start|>assistant\n") == add_generation_prompt


def test_special_ids_and_vocab(tok, hf_tok):
    assert tok.vocab_size == len(hf_tok) == 49152
    assert tok.bos_token_id == hf_tok.bos_token_id == 1
    assert tok.eos_token_ids == [2] and tok.eos_token == "<|im_end|>"
    hello = tok.encode(" hello")
    assert len(hello) == 1 and tok.id_to_token(hello[0]) == " hello"
    assert tok.id_to_token(2) == "<|im_end|>"


@pytest.mark.parametrize("text", TEXTS)
def test_token_bytes_concatenate_to_utf8(tok, text):
    ids = tok.encode(text)
    assert b"".join(tok.token_bytes(i) for i in ids) == text.encode("utf-8")


def test_model_without_chat_template_gets_the_plain_prompt_rule(tok):
    base = Tokenizer(tok.backend, chat_template=None, bos_token=None, eos_token=None, source="m.gguf")
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 + 2?"}]
    assert base.apply_chat_template(messages) == "Be brief.\n\nUser: What is 2 + 2?\n\nAssistant:"
    assert base.apply_chat_template(messages[1:], add_generation_prompt=False) == "User: What is 2 + 2?"
    partial = messages + [{"role": "assistant", "content": "It is"}]
    assert base.apply_chat_template(partial, add_generation_prompt=False, continue_final_message=True).endswith(
        "\n\nAssistant: It is")


def test_chat_errors_are_clear(tok):
    for bad in ([], "hi", [{"content": "no role"}], [{"role": "user"}], [{"role": "user", "content": [{"type": "image_url"}]}]):
        with pytest.raises(InvalidRequestError, match="messages"):
            tok.apply_chat_template(bad)
    raising = Tokenizer(tok.backend, chat_template="{{ raise_exception('roles must alternate') }}", bos_token=None,
                        eos_token=None, source="m.gguf")
    with pytest.raises(InvalidRequestError, match="roles must alternate"):
        raising.apply_chat_template([{"role": "user", "content": "hi"}])
    broken = Tokenizer(tok.backend, chat_template="{% for m in messages %}", bos_token=None, eos_token=None, source="m.gguf")
    with pytest.raises(LaminaError, match=r"m\.gguf: invalid chat template \(line 1\)"):
        broken.apply_chat_template([{"role": "user", "content": "hi"}])
    typed = Tokenizer(tok.backend, chat_template="{{ messages[0]['content'] + 1 }}", bos_token=None, eos_token=None, source="m.gguf")
    with pytest.raises(InvalidRequestError, match="chat template rejected the messages"):
        typed.apply_chat_template([{"role": "user", "content": "hi"}])


def test_content_parts_and_none_content(tok):
    parts = [{"role": "user", "content": [{"type": "text", "text": "What is "}, {"type": "text", "text": "2+2?"}]},
             {"role": "assistant", "content": None}]
    messages = [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": ""}]
    assert tok.apply_chat_template(parts) == tok.apply_chat_template(messages)
    assert parts[1]["content"] is None  # the caller's messages are not modified


def test_folder_tokenizer_equals_gguf_tokenizer(tok, tiny_llama_dir, tiny_qwen2_dir):
    from transformers import AutoTokenizer

    # transformers keeps tokenizer.json as written for a llama folder (for a qwen2 folder it swaps in Qwen2's split regex)
    hf_folder = AutoTokenizer.from_pretrained(tiny_llama_dir)
    for folder in (tiny_llama_dir, tiny_qwen2_dir):
        folder_tok = load_model(folder).tokenizer
        for text in TEXTS:
            assert folder_tok.encode(text) == tok.encode(text) == hf_folder.encode(text, add_special_tokens=False)
        assert folder_tok.eos_token_ids == tok.eos_token_ids and folder_tok.bos_token_id == 1
        assert folder_tok.apply_chat_template(CONVERSATIONS[1]) == tok.apply_chat_template(CONVERSATIONS[1])


# ---------------------------------------------------------------- incremental detokenizer


def stream(tok: Tokenizer, ids: list[int]) -> list[str]:
    detok = tok.detokenizer()
    deltas = [detok.add(i) for i in ids]
    assert detok.text == "".join(deltas)
    return deltas


@pytest.mark.parametrize("text", TEXTS)
def test_detokenizer_deltas_concatenate_to_decode(tok, text):
    ids = tok.encode(text)
    deltas = stream(tok, ids)
    assert "".join(deltas) == tok.decode(ids)
    assert not any("\ufffd" in d for d in deltas)


def test_detokenizer_holds_back_partial_utf8(tok):
    ids = tok.encode("😀")
    assert len(ids) > 1  # one emoji spans several byte-level tokens
    deltas = stream(tok, ids)
    assert deltas[:-1] == [""] * (len(ids) - 1) and deltas[-1] == "😀"
    detok = tok.detokenizer()
    detok.add(ids[0])
    assert detok.text == "" and detok.flush() == "\ufffd"


def test_detokenizer_window_stays_small(tok):
    ids = tok.encode("The quick brown fox jumps over the lazy dog. " * 40)
    detok = tok.detokenizer()
    for i in ids:
        detok.add(i)
        assert detok.read_offset - detok.prefix_offset <= 2 and len(detok.ids) - detok.prefix_offset <= 2
    assert detok.text == tok.decode(ids)


def test_detokenizer_random_token_streams(tok):
    rng = np.random.default_rng(0)
    pieces = ["😀", "é", " the", "日本", "\n", "👨‍👩‍👧", "ﬁ", "<|im_end|>", " x"]
    for _ in range(20):
        text = "".join(rng.choice(pieces, size=12))
        ids = tok.encode(text)
        assert "".join(stream(tok, ids)) == tok.decode(ids)


# ---------------------------------------------------------------- sentencepiece ("llama") GGUF tokenizers

SPM_WORDS = ["▁", "h", "e", "l", "o", "w", "r", "d", "▁h", "he", "ll", "lo", "▁he", "▁hel", "▁hello", "▁w", "or",
             "▁wor", "▁world", "ld", "é", "▁caf", "▁café"]


@pytest.fixture(scope="module")
def spm_gguf(tmp_path_factory):
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + SPM_WORDS
    path = tmp_path_factory.mktemp("spm") / "spm.gguf"
    w = GGUFWriter(str(path), "llama")
    w.add_block_count(1)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores([0.0] * 259 + [-float(i) for i in range(len(SPM_WORDS))])
    w.add_token_types([2, 3, 3] + [6] * 256 + [1] * len(SPM_WORDS))
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_tensor("token_embd.weight", np.zeros((len(tokens), 32), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.mark.parametrize("text", ["hello world", "  hello\nworld", "café hello", "xyz ✓ 😀", "<s>hello</s>"])
def test_sentencepiece_gguf_equals_transformers(spm_gguf, text):
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(spm_gguf.parent, gguf_file=spm_gguf.name)
    ours = tokenizer_from_gguf(GGUFFile.open(spm_gguf))
    ids = ours.encode(text)
    assert ids == hf.encode(text, add_special_tokens=False)
    assert ours.decode(ids) == hf.decode(ids, skip_special_tokens=True)
    assert "".join(stream(ours, ids)) == ours.decode(ids)
    prefixed = text if text.startswith(("<s>", " ")) else " " + text  # Metaspace adds "▁" unless one is there
    assert b"".join(ours.token_bytes(i) for i in ids).decode() == prefixed
    if not text.startswith("<s>"):  # transformers would add a second BOS; we do not
        assert ours.encode(text, add_special_tokens=True) == hf.encode(text)


def test_byte_level_vocab_respells_raw_tokens_and_keeps_spelled_ones():
    """GGUF byte-level vocabularies are spelled in the byte alphabet (the fast path); a raw UTF-8 token is respelled."""
    from lamina.engine.loader.gguf_tokenizer import _byte_level

    from lamina.engine.tokenizer import byte_to_unicode

    euro = "".join(byte_to_unicode()[b] for b in "€".encode())  # € is no byte-alphabet character: three of them
    spelled = ["a", "b", "ab", "Ġa", euro]
    assert _byte_level(spelled, ["a b"], None).get_vocab() == {t: i for i, t in enumerate(spelled)}
    raw = ["a", "b", "ab", "Ġa", "€"]
    assert _byte_level(raw, ["a b"], None).get_vocab() == {t: i for i, t in enumerate(spelled)}
