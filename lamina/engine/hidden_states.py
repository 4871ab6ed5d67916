"""Hidden states of the loaded model for given token sequences: a plain causal forward over the full sequences (no
KV cache kept, no second model load), for learned verifiers and probes.

Layer indices follow transformers' `output_hidden_states`: 0 is the token embeddings, i in 1..L the output of
decoder layer i, and L (the last) is taken after the final norm; negative indices count from L (-1 is L).
"""
from __future__ import annotations

import hashlib
import numbers
from pathlib import Path

import torch
from torch import Tensor

from lamina.engine.models.attention import AttentionMetadata, PrefillSegment
from lamina.engine.models.llama import LlamaForCausalLM
from lamina.errors import InvalidRequestError

IDENTITY_BYTES = 8 << 20  # how much of each weights file the identity hash reads


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)  # numpy's ints too


def resolve_layers(layers: list[int], count: int) -> list[int]:
    """Each of `layers` as an index 0 (embeddings) .. count (the last block's output), negatives counting from the
    end; InvalidRequestError for an empty or non-list `layers`, or a layer that is no int or out of range."""
    if not isinstance(layers, (list, tuple)) or not layers or not all(_is_int(layer) for layer in layers):
        raise InvalidRequestError(f"hidden-state layers must be a non-empty list of ints, got {layers!r}")
    out = []
    for layer in layers:
        index = layer + count + 1 if layer < 0 else layer
        if not 0 <= index <= count:
            raise InvalidRequestError(f"hidden-state layer {layer} out of range for a model with {count} layers "
                                      f"(0 = embeddings .. {count}, or -1 .. -{count + 1})")
        out.append(index)
    return out


@torch.inference_mode()
def hidden_states(model: LlamaForCausalLM, sequences: list[list[int]], layers: list[int],
                  positions: list[list[int]] | None = None) -> Tensor:
    """[batch, len(layers), P, hidden] float32: the states of `sequences` (token ids, one forward for the batch) at
    `layers` and `positions` (per sequence, P each, negative from the end; None: the last token, P = 1; with one
    sequence a flat list of ints is its row). The forward covers every token of the batch at once (no chunking):
    a caller bounds the batch. InvalidRequestError for an empty sequence, a layer or position that is no int or out
    of range (naming the sequence), or ragged positions."""
    if not sequences or any(not seq for seq in sequences):
        raise InvalidRequestError("hidden_states needs non-empty token sequences")
    count = len(model.layers)
    wanted = resolve_layers(layers, count)
    listed = isinstance(positions, (list, tuple))
    if positions is None:
        rows = [[-1] for _ in sequences]
    elif listed and len(sequences) == 1 and positions and all(_is_int(p) for p in positions):
        rows = [list(positions)]  # one sequence, its positions given flat
    elif listed and all(isinstance(p, (list, tuple)) for p in positions):
        rows = [list(p) for p in positions]
    else:
        raise InvalidRequestError(f"positions must be a list of int lists (one per sequence), got {positions!r}")
    if len(rows) != len(sequences) or len({len(r) for r in rows}) != 1 or not rows[0]:
        raise InvalidRequestError(f"positions: one equally long, non-empty list per sequence ({len(sequences)} "
                                  f"sequences), got {positions!r}")
    flat_rows = []
    start = 0
    for index, (seq, row) in enumerate(zip(sequences, rows)):
        for p in row:
            if not _is_int(p) or not -len(seq) <= p < len(seq):
                raise InvalidRequestError(f"position {p!r} of sequence {index}: must be an int in -{len(seq)} .. "
                                          f"{len(seq) - 1} (the sequence has {len(seq)} tokens)")
            flat_rows.append(start + (p % len(seq)))
        start += len(seq)
    ids = torch.tensor([t for seq in sequences for t in seq], dtype=torch.long)
    pos = torch.cat([torch.arange(len(seq)) for seq in sequences])
    meta = _uncached_metadata(model, sequences)
    picks = torch.tensor(flat_rows)
    x = model.embed(ids)
    taken = {0: x[picks]} if 0 in wanted else {}
    for i, layer in enumerate(model.layers, 1):
        x = layer(x, pos, model.rope_of(layer), meta)
        if i in wanted:
            taken[i] = (model.norm(x) if i == count else x)[picks]
    stacked = torch.stack([taken[i] for i in wanted])  # [layers, batch * P, hidden]
    return stacked.view(len(wanted), len(sequences), len(rows[0]), -1).transpose(0, 1).float().contiguous()


TOKEN_STATS = ("mean_logprob", "min_logprob", "mean_entropy", "log_length")  # answer_summary's token statistics


@torch.inference_mode()
def answer_summary(model: LlamaForCausalLM, sequences: list[list[int]], starts: list[int], layers: list[int]
                   ) -> tuple[Tensor, Tensor, Tensor]:
    """Summaries of each sequence's answer, the tokens sequence[start:] (one forward for the batch):
    last [batch, len(layers), hidden], the state of the last token (as `hidden_states`);
    mean [batch, len(layers), hidden], the states averaged over the answer's tokens;
    stats [batch, 4] (TOKEN_STATS), from the model's own next-token distribution (temperature 1) at the answer's
    tokens: mean and min log-probability of the tokens it produced, mean entropy (nats), log(1 + answer tokens).
    An empty answer (start == len) averages and scores its last prompt token instead (stats 0 but the length).
    Sequences with the same prompt (sequence[:start]), such as n samples of one question, share one pass over it:
    the forward reads each distinct prompt once and every answer attends to its prompt's keys and values.
    float32. InvalidRequestError as `hidden_states`, or for a start outside 1..len(sequence)."""
    if not sequences or any(not seq for seq in sequences) or len(starts) != len(sequences):
        raise InvalidRequestError("answer_summary needs non-empty token sequences and one start per sequence")
    for seq, start in zip(sequences, starts):
        if not 1 <= start <= len(seq):
            raise InvalidRequestError(f"answer start {start} out of range for a sequence of {len(seq)} tokens "
                                      "(the prompt must hold at least one token)")
    count = len(model.layers)
    wanted = resolve_layers(layers, count)
    batch = _SharedPrompts(sequences, starts)
    meta = batch.metadata(model)

    def summarise(x: Tensor) -> tuple[Tensor, Tensor]:
        return (torch.stack([x[rows[-1]] for rows in batch.rows]),
                torch.stack([x[rows].float().mean(0) for rows in batch.rows]))

    x = model.embed(batch.ids)
    taken = {0: summarise(x)} if 0 in wanted else {}
    final = None
    for i, layer in enumerate(model.layers, 1):
        x = layer(x, batch.positions, model.rope_of(layer), meta)
        if i == count:
            final = model.norm(x)
        if i in wanted:
            taken[i] = summarise(final if i == count else x)
    stats = []
    for seq, start, before in zip(sequences, starts, batch.predicting):
        answer = len(seq) - start
        if answer == 0:
            stats.append([0.0, 0.0, 0.0, 0.0])
        else:  # the states before each answer token predict it
            logp = torch.log_softmax(model.compute_logits(final[before]).float(), -1)
            chosen = logp.gather(1, torch.tensor(seq[start:]).view(-1, 1))[:, 0]
            entropy = -(logp.exp() * logp).sum(-1)
            stats.append([chosen.mean().item(), chosen.min().item(), entropy.mean().item(), float(torch.log1p(
                torch.tensor(float(answer))))])
    last = torch.stack([taken[i][0] for i in wanted], 1).float()
    mean = torch.stack([taken[i][1] for i in wanted], 1).float()
    return last.contiguous(), mean.contiguous(), torch.tensor(stats, dtype=torch.float32)


class _SharedPrompts:
    """One forward batch of prompt + answer sequences in which each distinct prompt appears once: the flat rows are
    the distinct prompts, then every non-empty answer. Each row's k/v goes to its own slot of a scratch cache of
    one-token blocks (written by each layer before it attends, so one scratch pair serves all layers); an answer attends
    through a block table to its prompt's slots and its own."""

    def __init__(self, sequences: list[list[int]], starts: list[int]) -> None:
        first_row: dict[tuple[int, ...], int] = {}
        ids: list[int] = []
        positions: list[int] = []
        self.segments: list[tuple[int, int, int, list[int] | None]] = []  # start, end, context, slots
        prompt_rows = []
        for seq, start in zip(sequences, starts):
            prompt = tuple(seq[:start])
            if prompt not in first_row:
                first_row[prompt] = len(ids)
                self.segments.append((len(ids), len(ids) + start, start, None))
                ids += prompt
                positions += range(start)
            prompt_rows.append(range(first_row[prompt], first_row[prompt] + start))
        self.rows: list[list[int]] = []  # per sequence, the rows its summaries read: its answer (or prompt's last)
        self.predicting: list[list[int]] = []  # per sequence, the rows whose logits predict its answer tokens
        for seq, start, prompt in zip(sequences, starts, prompt_rows):
            answer = range(len(ids), len(ids) + len(seq) - start)
            if answer:
                self.segments.append((answer.start, answer.stop, len(seq), list(prompt) + list(answer)))
                ids += seq[start:]
                positions += range(start, len(seq))
            self.rows.append(list(answer) or [prompt[-1]])
            self.predicting.append([prompt[-1]] + list(answer)[:-1])
        self.ids = torch.tensor(ids, dtype=torch.long)
        self.positions = torch.tensor(positions, dtype=torch.long)

    def metadata(self, model: LlamaForCausalLM) -> AttentionMetadata:
        total = len(self.ids)
        attn = model.layers[0].self_attn
        keys, values = (torch.empty(attn.num_kv_heads, total, 1, attn.head_dim, dtype=model.norm.weight.dtype)
                        for _ in range(2))
        segments = [PrefillSegment(start, end, context, None if slots is None else torch.tensor(slots))
                    for start, end, context, slots in self.segments]
        return AttentionMetadata([keys] * len(model.layers), [values] * len(model.layers), torch.arange(total),
                                 segments, decode_start=total)


def _uncached_metadata(model: LlamaForCausalLM, sequences: list[list[int]]) -> AttentionMetadata:
    """Attention over each sequence's own new keys (a causal prefill per sequence); the k/v the attention writes go to
    one scratch buffer shared by all layers and never read."""
    total = sum(len(seq) for seq in sequences)
    attn = model.layers[0].self_attn
    scratch = torch.empty(attn.num_kv_heads, 1, total, attn.head_dim, dtype=model.norm.weight.dtype)
    segments, start = [], 0
    for seq in sequences:
        segments.append(PrefillSegment(start, start + len(seq), len(seq), None))
        start += len(seq)
    return AttentionMetadata([scratch] * len(model.layers), [scratch] * len(model.layers), torch.arange(total),
                             segments, decode_start=total)


def model_identity(model: str | Path) -> str:
    """A content identity of a model's weights: sha256 over each weights file's size and first IDENTITY_BYTES
    (sorted by name for a folder), so a renamed copy keeps it and another model or quantisation changes it."""
    from lamina.engine.loader import resolve_model_path

    path = resolve_model_path(model)
    files = sorted(p for p in path.iterdir() if p.suffix in (".safetensors", ".json")) if path.is_dir() else [path]
    digest = hashlib.sha256()
    for file in files:
        digest.update(f"{file.name if path.is_dir() else ''}:{file.stat().st_size}:".encode())
        with file.open("rb") as f:
            digest.update(f.read(IDENTITY_BYTES))
    return digest.hexdigest()[:32]
