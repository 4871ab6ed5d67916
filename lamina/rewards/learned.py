"""Learned verifiers: a logistic-regression probe on the generator's own hidden states at chosen layers, trained by
`lamina verifier train`, saved as one JSON file. An outcome verifier (kind "orm", `LearnedVerifier`) reads the last
token of prompt + answer; a process verifier (kind "prm", `ProcessVerifier`) reads the last token of every step.

The file holds the probe (feature standardisation, weights, bias), the layers it reads, the identity of the model
whose states it was trained on (lamina.engine.hidden_states.model_identity), the task, the training size and the
held-out metrics. Scoring needs no scikit-learn: P(correct) = sigmoid(w . (x - mean) / scale + b), in [0, 1].
A verifier bound to another model than its own raises VerifierError naming both.
"""
from __future__ import annotations

import asyncio
import json
import math
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from lamina.errors import InvalidRequestError
from lamina.rewards.base import OutcomeRewardModel, ProcessRewardModel, Question, Response, Score, messages_of

FORMAT = "lamina-verifier/1"
FEATURE_BATCH = 16  # sequences per forward pass


class VerifierError(InvalidRequestError):
    """A verifier file that cannot be read, or that was trained on another model."""


PROBES = ("logistic", "mlp")
MLP_HIDDEN = 64  # units of the MLP probe's one hidden layer


@dataclass(slots=True)
class Probe:
    """A logistic regression on standardised features, or (with `hidden` layers) a small ReLU MLP whose output unit
    is one: [features] -> P(correct). hidden[i]: [inputs, units] weights, hidden_bias[i]: [units]."""

    mean: list[float]
    scale: list[float]
    weights: list[float]
    bias: float
    hidden: list[list[list[float]]] = field(default_factory=list)
    hidden_bias: list[list[float]] = field(default_factory=list)

    @property
    def kind(self) -> str:
        return "mlp" if self.hidden else "logistic"

    def predict(self, features) -> list[float]:
        """[n, features] (array-like) -> n probabilities in [0, 1]."""
        import numpy as np

        x = (np.asarray(features, dtype=np.float64) - np.asarray(self.mean)) / np.asarray(self.scale)
        for w, b in zip(self.hidden, self.hidden_bias):
            x = np.maximum(x @ np.asarray(w) + np.asarray(b), 0.0)
        logits = x @ np.asarray(self.weights) + self.bias
        return [1.0 / (1.0 + math.exp(-v)) if v >= 0 else math.exp(v) / (1.0 + math.exp(v)) for v in logits]


def train_probe(features, labels, seed: int = 0, c: float = 1.0, kind: str = "logistic", alpha: float = 1e-3) -> Probe:
    """Fit the probe on [n, features] and n labels in [0, 1]: `logistic` (scikit-learn's LogisticRegression, lbfgs,
    L2 strength 1/c) or `mlp` (MLPClassifier, one ReLU layer of MLP_HIDDEN units, L2 strength alpha, adam). Labels are
    0/1, or soft (a process verifier's rollout success rates; a soft label p is fitted as a right row of weight p
    and a wrong row of weight 1 - p, the cross-entropy of the soft target). Deterministic for equal inputs and
    seed. ValueError when the labels do not hold both some right and some wrong mass, or for an unknown kind."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier

    if kind not in PROBES:
        raise ValueError(f"probe must be one of {', '.join(PROBES)}, got {kind!r}")
    x, y = np.asarray(features, dtype=np.float64), np.asarray(labels, dtype=np.float64)
    if len(y) == 0 or y.max() <= 0 or y.min() >= 1:
        only = int(y[0]) if len(y) else "-"
        raise ValueError(f"a probe needs right and wrong samples; all {len(y)} labels are {only}")
    mean, scale = x.mean(axis=0), x.std(axis=0)
    scale[scale < 1e-8] = 1.0
    z = (x - mean) / scale
    model = (LogisticRegression(C=c, max_iter=2000, random_state=seed) if kind == "logistic" else
             MLPClassifier((MLP_HIDDEN,), alpha=alpha, max_iter=300, random_state=seed))
    if np.isin(y, (0.0, 1.0)).all():
        model.fit(z, y.astype(np.int64))
    else:
        model.fit(np.concatenate([z, z]), np.concatenate([np.ones(len(y)), np.zeros(len(y))]).astype(np.int64),
                  sample_weight=np.concatenate([y, 1.0 - y]))
    if kind == "logistic":
        return Probe(mean.tolist(), scale.tolist(), model.coef_[0].tolist(), float(model.intercept_[0]))
    *hidden, out = model.coefs_
    return Probe(mean.tolist(), scale.tolist(), out[:, 0].tolist(), float(model.intercepts_[-1][0]),
                 [w.tolist() for w in hidden], [b.tolist() for b in model.intercepts_[:-1]])


@dataclass(slots=True)
class VerifierInfo:
    """What a verifier file says about itself besides its probe."""

    model: str  # the model name it was trained with (for messages; the identity is what is checked)
    model_identity: str
    layers: list[int]  # hidden-state layers read (transformers' indexing: 0 = embeddings, L = final)
    task: str = ""
    split: str = ""
    questions: int = 0  # training questions
    samples: int = 0  # training samples (questions x samples per question)
    seed: int = 0
    metrics: dict[str, Any] = field(default_factory=dict)  # held-out: auroc, ece, selection_accuracy, ...
    kind: str = "orm"  # "orm": the answer's last token; "prm": each step's last token
    rollouts: int = 0  # prm: continuations per prefix that labelled it
    pooling: list[str] = field(default_factory=lambda: ["last"])  # orm features, of POOLINGS, in this order
    technique: str = "generate"  # its training samples: "generate" answers, or "program"s labelled by what they print


def prompt_ids(tokenizer, question: Question) -> list[int]:
    """The token ids the local backend prompts the model with for this question (its chat template)."""
    return tokenizer.encode_prompt(tokenizer.apply_chat_template(messages_of(question), add_generation_prompt=True))


POOLINGS = ("last", "mean", "logprob")


def feature_blocks(engine, sequences: list[list[int]], starts: list[int], layers: list[int]) -> dict[str, Any]:
    """Every ORM feature of each sequence, as numpy float32 blocks: "last" and "mean" [n, len(layers), hidden] (the
    answer's last-token and mean states, sequence[start:] being the answer), "logprob" [n, 4] (TOKEN_STATS of
    lamina.engine.hidden_states). Batched, FEATURE_BATCH sequences a forward pass; a progress bar (sequences/s)
    when there is more than one batch."""
    import numpy as np
    from tqdm import tqdm

    from lamina.engine.hidden_states import answer_summary

    parts: dict[str, list] = {"last": [], "mean": [], "logprob": []}
    batches = range(0, len(sequences), FEATURE_BATCH)
    bar = tqdm(total=len(sequences), desc="hidden-state features", unit="seq", leave=False,
               disable=len(batches) < 2)
    for i in batches:
        last, mean, stats = answer_summary(engine.model, sequences[i:i + FEATURE_BATCH], starts[i:i + FEATURE_BATCH],
                                           layers)
        parts["last"].append(last.numpy())
        parts["mean"].append(mean.numpy())
        parts["logprob"].append(stats.numpy())
        bar.update(len(sequences[i:i + FEATURE_BATCH]))
    bar.close()
    return {k: np.concatenate(v) for k, v in parts.items()} if sequences else {}


def assemble(blocks: dict[str, Any], block_layers: list[int], layers: list[int], pooling: list[str]):
    """[n, features] numpy: of `blocks` (feature_blocks at `block_layers`), the `pooling` kinds at `layers`, in that
    order (a layer's states, layer after layer; "logprob" whole). ValueError for a layer or pooling not there."""
    import numpy as np

    missing = [layer for layer in layers if layer not in block_layers]
    unknown = [p for p in pooling if p not in POOLINGS]
    if missing or unknown or not pooling:
        raise ValueError(f"features: layers {missing} not collected (have {block_layers}) or pooling "
                         f"{unknown or pooling} not among {', '.join(POOLINGS)}")
    index = [block_layers.index(layer) for layer in layers]
    cols = [blocks["logprob"] if p == "logprob" else blocks[p][:, index].reshape(len(blocks[p]), -1) for p in pooling]
    return np.concatenate(cols, axis=1)


def features_of(engine, sequences: list[list[int]], layers: list[int], starts: list[int] | None = None,
                pooling: list[str] | tuple[str, ...] = ("last",)) -> list[list[float]]:
    """[n, features]: each sequence's features, concatenated in `pooling` order (see `assemble`); with the default
    ("last",) the last-token states at `layers`, [n, len(layers) * hidden]. "mean" and "logprob" read the answer
    sequence[start:], so they need `starts`; ValueError without them."""
    from lamina.engine.hidden_states import hidden_states

    if list(pooling) != ["last"]:
        if starts is None or len(starts) != len(sequences):
            raise ValueError(f"features {list(pooling)} need each sequence's answer start")
        if not sequences:
            return []
        return assemble(feature_blocks(engine, sequences, starts, layers), list(layers), list(layers),
                        list(pooling)).tolist()
    rows: list[list[float]] = []
    for start in range(0, len(sequences), FEATURE_BATCH):
        states = hidden_states(engine.model, sequences[start:start + FEATURE_BATCH], layers)  # [b, layers, 1, h]
        rows += states.reshape(states.shape[0], -1).tolist()
    return rows


def step_features(engine, sequence: list[int], ends: list[int], layers: list[int]) -> list[list[float]]:
    """[len(ends), len(layers) * hidden]: the states of `sequence` at the last token of each prefix
    sequence[:end] (one forward pass), layers concatenated."""
    from lamina.engine.hidden_states import hidden_states

    states = hidden_states(engine.model, [sequence], layers, [[end - 1 for end in ends]])  # [1, layers, P, h]
    return states[0].transpose(0, 1).reshape(len(ends), -1).tolist()


@lru_cache(maxsize=16)
def cached_identity(model: str) -> str:
    """model_identity of a model name or path, read once per process."""
    from lamina.engine.hidden_states import model_identity

    return model_identity(model)


class _Learned:
    """A probe bound to the states of the model it was trained on; saved and loaded as one file (`_Learned.load`
    loads either kind; a subclass's load only its own)."""

    kind = ""

    def __init__(self, probe: Probe, info: VerifierInfo) -> None:
        self.probe = probe
        self.info = info
        self.engine: Any = None  # the LLMEngine (model + tokenizer) it reads

    def trained_on(self, model: str) -> bool:
        """Whether `model` (a name or path) has the weights this verifier was trained on (model_identity)."""
        return cached_identity(model) == self.info.model_identity

    def bind(self, engine: Any, model: str):
        """This verifier reading `engine`'s states (an LLMEngine: .model, .tokenizer) of model `model` (a copy);
        VerifierError when `model`'s weights are not the ones it was trained on."""
        if not self.trained_on(model):
            raise VerifierError(f"verifier trained on model {self.info.model!r} (identity {self.info.model_identity})"
                                f" cannot score model {model!r} (identity {cached_identity(model)}); train one for "
                                "that model")
        bound = type(self)(self.probe, self.info)
        bound.engine = engine
        return bound

    def _bound(self) -> Any:
        if self.engine is None:
            raise VerifierError("a learned verifier must be bound to its model's engine (bind) before scoring")
        return self.engine

    def _tokens(self, response: Response) -> list[int]:
        return list(response.token_ids) if response.token_ids else self._bound().tokenizer.encode(response.text)

    def save(self, path: str | Path) -> None:
        """Write the verifier (JSON: format, info, probe) to `path`, creating its folder."""
        data = {"format": FORMAT, **asdict(self.info), "probe": asdict(self.probe)}
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(data, indent=1), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path):
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise VerifierError(f"{path}: cannot read verifier file: {exc}") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise VerifierError(f"{path}: not a verifier file (expected format {FORMAT!r})")
        try:
            if not isinstance(data.get("probe"), dict):
                raise TypeError("no `probe` mapping (the probe's weights)")
            probe = Probe(**data.pop("probe"))
            data.pop("format")
            info = VerifierInfo(**data)
        except TypeError as exc:
            raise VerifierError(f"{path}: malformed verifier file: {exc}") from None
        kinds = {k.kind: k for k in _Learned.__subclasses__()}
        if info.kind not in kinds or (cls.kind and info.kind != cls.kind):
            raise VerifierError(f"{path}: a {info.kind} verifier, expected a {cls.kind or ' or '.join(kinds)} one "
                                f"(train it with lamina verifier train --kind {cls.kind or 'orm'})")
        return kinds[info.kind](probe, info)

    def score_sequences(self, sequences: list[list[int]], starts: list[int] | None = None) -> list[float]:
        """The probe's score of each whole sequence (prompt + answer, the answer from `starts`, which an ORM reading
        more than the last token needs), read at its last token: an ORM's P(correct), a PRM's score of the answer's
        last step."""
        engine = self._bound()
        if not sequences:
            return []
        return self.probe.predict(features_of(engine, sequences, self.info.layers, starts, self.info.pooling))


class LearnedVerifier(_Learned, OutcomeRewardModel):
    """An outcome verifier. Scores in [0, 1]: the probe's P(correct) of each answer, from the states of its generator
    (`bind` it to the local engine first; answers carry their token ids, else their text is tokenized)."""

    name = "verifier"
    kind = "orm"

    def sequences(self, question: Question, answers: list[Response]) -> list[list[int]]:
        prompt = prompt_ids(self._bound().tokenizer, question)
        return [prompt + self._tokens(a) for a in answers]

    async def score(self, question: Question, answers: list[Response]) -> list[Score]:
        return (await self.score_counted(question, answers))[0]

    async def score_counted(self, question: Question, answers: list[Response]) -> tuple[list[Score], int]:
        """`score`, and the tokens its pass reads: the question's prompt once (its answers attend to it) and each
        answer's."""
        prompt = prompt_ids(self._bound().tokenizer, question)
        sequences = [prompt + self._tokens(a) for a in answers]
        scores = await asyncio.to_thread(self.score_sequences, sequences, [len(prompt)] * len(sequences))
        return list(scores), len(prompt) + sum(len(seq) - len(prompt) for seq in sequences)


class ProcessVerifier(_Learned, ProcessRewardModel):
    """A process verifier (Math-Shepherd-style: trained on the fraction of rollouts from each prefix that reach a
    right answer). Scores in [0, 1]: the probe's estimate, after each step, that the answer can still end right;
    read at the last token of each step (steps carry their token ids, else their text is tokenized)."""

    name = "process_verifier"
    kind = "prm"

    def score_prefixes(self, sequence: list[int], ends: list[int]) -> list[float]:
        """Scores of sequence[:end] for each end (token counts, increasing, each >= 1), one forward pass."""
        return self.probe.predict(step_features(self._bound(), sequence, ends, self.info.layers)) if ends else []

    def _score_all(self, question: Question, steps_per_answer: list[list[Response]]) -> list[list[Score]]:
        prompt = prompt_ids(self._bound().tokenizer, question)
        out: list[list[Score]] = []
        for steps in steps_per_answer:
            sequence, ends = list(prompt), []
            for step in steps:
                sequence += self._tokens(step)
                ends.append(len(sequence))
            out.append(list(self.score_prefixes(sequence, ends)))
        return out

    async def score_steps(self, question: Question, steps_per_answer: list[list[Response]]) -> list[list[Score]]:
        return await asyncio.to_thread(self._score_all, question, steps_per_answer)


def load_verifier(path: str | Path) -> LearnedVerifier | ProcessVerifier:
    """A verifier file of either kind (orm: LearnedVerifier, prm: ProcessVerifier); VerifierError when unreadable."""
    return _Learned.load(path)
