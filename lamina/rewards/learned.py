"""A learned outcome verifier: a logistic-regression probe on the generator's own hidden states (the last token of
prompt + answer, at chosen layers), trained by `lamina verifier train`, saved as one JSON file.

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
from lamina.rewards.base import OutcomeRewardModel, Question, Response, Score, messages_of

FORMAT = "lamina-verifier/1"
FEATURE_BATCH = 16  # sequences per forward pass


class VerifierError(InvalidRequestError):
    """A verifier file that cannot be read, or that was trained on another model."""


@dataclass(slots=True)
class Probe:
    """Logistic regression on standardised features: [features] -> P(correct)."""

    mean: list[float]
    scale: list[float]
    weights: list[float]
    bias: float

    def predict(self, features) -> list[float]:
        """[n, features] (array-like) -> n probabilities in [0, 1]."""
        import numpy as np

        x = (np.asarray(features, dtype=np.float64) - np.asarray(self.mean)) / np.asarray(self.scale)
        logits = x @ np.asarray(self.weights) + self.bias
        return [1.0 / (1.0 + math.exp(-v)) if v >= 0 else math.exp(v) / (1.0 + math.exp(v)) for v in logits]


def train_probe(features, labels, seed: int = 0, c: float = 1.0) -> Probe:
    """Fit the probe (scikit-learn's LogisticRegression, lbfgs, L2 strength 1/c) on [n, features] and n 0/1 labels;
    deterministic for equal inputs and seed. ValueError when the labels are all one class."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    x, y = np.asarray(features, dtype=np.float64), np.asarray(labels, dtype=np.int64)
    if len(set(y.tolist())) < 2:
        only = int(y[0]) if len(y) else "-"
        raise ValueError(f"a probe needs right and wrong samples; all {len(y)} labels are {only}")
    mean, scale = x.mean(axis=0), x.std(axis=0)
    scale[scale < 1e-8] = 1.0
    model = LogisticRegression(C=c, max_iter=2000, random_state=seed).fit((x - mean) / scale, y)
    return Probe(mean.tolist(), scale.tolist(), model.coef_[0].tolist(), float(model.intercept_[0]))


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


def prompt_ids(tokenizer, question: Question) -> list[int]:
    """The token ids the local backend prompts the model with for this question (its chat template)."""
    return tokenizer.encode(tokenizer.apply_chat_template(messages_of(question), add_generation_prompt=True))


def features_of(engine, sequences: list[list[int]], layers: list[int]) -> list[list[float]]:
    """[n, len(layers) * hidden]: the last-token states of each sequence at `layers`, concatenated (batched)."""
    from lamina.engine.hidden_states import hidden_states

    rows: list[list[float]] = []
    for start in range(0, len(sequences), FEATURE_BATCH):
        states = hidden_states(engine.model, sequences[start:start + FEATURE_BATCH], layers)  # [b, layers, 1, h]
        rows += states.reshape(states.shape[0], -1).tolist()
    return rows


@lru_cache(maxsize=16)
def cached_identity(model: str) -> str:
    """model_identity of a model name or path, read once per process."""
    from lamina.engine.hidden_states import model_identity

    return model_identity(model)


class LearnedVerifier(OutcomeRewardModel):
    """Scores in [0, 1]: the probe's P(correct) of each answer, from the states of its generator (`bind` it to the
    local engine first; answers carry their token ids, else their text is tokenized)."""

    name = "verifier"

    def __init__(self, probe: Probe, info: VerifierInfo) -> None:
        self.probe = probe
        self.info = info
        self.engine: Any = None  # the LLMEngine (model + tokenizer) it reads

    def bind(self, engine: Any, model: str) -> "LearnedVerifier":
        """This verifier reading `engine`'s states (an LLMEngine: .model, .tokenizer) of model `model` (a copy);
        VerifierError when `model`'s weights are not the ones it was trained on."""
        identity = cached_identity(model)
        if identity != self.info.model_identity:
            raise VerifierError(f"verifier trained on model {self.info.model!r} (identity {self.info.model_identity})"
                                f" cannot score model {model!r} (identity {identity}); train one for that model")
        bound = LearnedVerifier(self.probe, self.info)
        bound.engine = engine
        return bound

    def sequences(self, question: Question, answers: list[Response]) -> list[list[int]]:
        tok = self.engine.tokenizer
        prompt = prompt_ids(tok, question)
        return [prompt + (list(a.token_ids) if a.token_ids else tok.encode(a.text)) for a in answers]

    def score_sequences(self, sequences: list[list[int]]) -> list[float]:
        if self.engine is None:
            raise VerifierError("a learned verifier must be bound to its model's engine (bind) before scoring")
        return self.probe.predict(features_of(self.engine, sequences, self.info.layers)) if sequences else []

    async def score(self, question: Question, answers: list[Response]) -> list[Score]:
        return list(await asyncio.to_thread(self.score_sequences, self.sequences(question, answers)))

    def save(self, path: str | Path) -> None:
        data = {"format": FORMAT, **asdict(self.info), "probe": asdict(self.probe)}
        Path(path).write_text(json.dumps(data, indent=1), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> "LearnedVerifier":
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise VerifierError(f"{path}: cannot read verifier file: {exc}") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise VerifierError(f"{path}: not a verifier file (expected format {FORMAT!r})")
        try:
            probe = Probe(**data.pop("probe"))
            data.pop("format")
            return cls(probe, VerifierInfo(**data))
        except TypeError as exc:
            raise VerifierError(f"{path}: malformed verifier file: {exc}") from None
