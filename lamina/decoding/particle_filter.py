"""Particle filtering (Puri et al. 2025, "A Probabilistic Inference Approach to Inference-Time Scaling of LLMs
using Particle-Based Monte Carlo Methods", arXiv 2502.01618; as in its_hub): N = width particles, each a partial
answer. Each round every open particle is extended by one step, the reward scores the new partial answers, and the
particles are resampled with replacement with probabilities softmax(score / resample_temperature) over all N
(particles that completed their answer are kept in the population and can be drawn again; they are not extended).
Copies of one node are extended together: one request with n = copies. An unscored particle weighs as the lowest
known score (uniform when none is scored). The search ends when every particle is complete or at the depth limit;
the answer is the best-scored complete particle. Resampling draws from random.Random(seed): reproducible."""
from __future__ import annotations

import math
import random
from collections import Counter

from lamina.decoding.searcher import Searcher
from lamina.decoding.tree import Node


def resample_weights(scores: list[float | None], temperature: float) -> list[float]:
    """softmax(score / temperature) over the particles ([len(scores)], summing to 1); None as the lowest score."""
    known = [s for s in scores if s is not None]
    floor = min(known) if known else 0.0
    logits = [(s if s is not None else floor) / temperature for s in scores]
    top = max(logits)
    exps = [math.exp(v - top) for v in logits]
    total = sum(exps)
    return [e / total for e in exps]


async def particle_filter(searcher: Searcher) -> Node | None:
    cfg = searcher.config
    rng = random.Random(cfg.seed)
    root = await searcher.open()
    particles = [c for g in await searcher.expand([(root, cfg.width)]) for c in g]
    while particles and not all(p.finished for p in particles) and not searcher.stopped:
        weights = resample_weights([p.score for p in particles], cfg.resample_temperature)
        drawn = rng.choices(particles, weights=weights, k=len(particles))
        kept = {p.node_id for p in drawn}
        await searcher.drop([p for p in particles if p.node_id not in kept and not p.finished])
        copies = Counter(p.node_id for p in drawn if not p.finished)
        nodes = {p.node_id: p for p in drawn}
        wants = [(nodes[i], k) for i, k in copies.items()]
        groups = await searcher.expand(wants)
        await searcher.drop([node for node, _ in wants[len(groups):]])  # cut by the budget
        particles = [p for p in drawn if p.finished] + [c for g in groups for c in g]
    return None
