"""Diverse verifier tree search (DVTS; Beeching, Tunstall and Rush, Hugging Face search-and-learn 2024): N/M
(N = width, M = beam_width) independent subtrees, one per first step sampled from the root; each step, every open
subtree extends its node by M children and keeps only the best-scored one (greedy on the reward), so the subtrees
stay diverse where one beam would collapse onto a few prefixes. A subtree ends when its kept node completes an
answer. The answer: the best-scored complete one."""
from __future__ import annotations

from lamina.decoding.searcher import Searcher
from lamina.decoding.tree import Node, score_key


async def dvts(searcher: Searcher) -> Node | None:
    cfg = searcher.config
    root = await searcher.open()
    groups = await searcher.expand([(root, max(1, cfg.width // cfg.beam_width))])
    frontier = [c for g in groups for c in g if not c.finished]
    while frontier and not searcher.stopped:
        groups = await searcher.expand([(node, cfg.beam_width) for node in frontier])
        frontier = []
        for group in groups:
            ranked = sorted(group, key=score_key, reverse=True)
            await searcher.drop(ranked[1:])
            if ranked and not ranked[0].finished:
                frontier.append(ranked[0])
    return None
