"""Best-of-N and weighted best-of-N (the baselines): N whole answers sampled from the root in one request, each
scored by the reward; best-of-N keeps the best-scored one, weighted best-of-N (Li et al. 2023, as in Hugging Face's
search-and-learn) groups the answers by their extracted final answer (lamina.answers.extract, "auto") and keeps the
best-scored answer of the group with the largest summed weight (an unscored answer adds 0). A weight is the score
itself, or exp(score) when every score is at most 0: log-probability rewards (mean_logprob), whose raw sum would
rank a group lower the more answers agree on it."""
from __future__ import annotations

import math
from collections import defaultdict

from lamina.decoding.searcher import Searcher
from lamina.decoding.tree import Node, score_key


def weighted_choice(answers: list[Node], texts: dict[int, str]) -> Node | None:
    """The best answer of the group (by extracted answer) whose weights sum highest; ties: the group met first."""
    from lamina.answers.extract import extract

    groups: dict[str, list[Node]] = defaultdict(list)
    for node in answers:
        groups[extract(texts[node.node_id]) or ""].append(node)
    if not groups:
        return None
    known = [n.score for n in answers if n.score is not None]
    log_scale = bool(known) and max(known) <= 0.0

    def weight(node: Node) -> float:
        if node.score is None:
            return 0.0
        return math.exp(node.score) if log_scale else node.score

    best = max(groups.values(), key=lambda g: sum(weight(n) for n in g))
    return max(best, key=score_key)


async def best_of_n(searcher: Searcher) -> Node | None:
    root = await searcher.open()
    await searcher.expand([(root, searcher.config.width)], whole=True)
    if not searcher.config.weighted:
        return None  # finish() keeps the best-scored answer
    answers = searcher.answers()
    return weighted_choice(answers, {n.node_id: "".join(s.text for s in searcher.tree.path(n)) for n in answers})
