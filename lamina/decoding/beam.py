"""Beam search over steps, as in Hugging Face's search-and-learn (Snell et al. 2024, "Scaling LLM Test-Time Compute
Optimally..."): N = width candidates per step; the root gets N children, then each step keeps the N/M
(M = beam_width) best-scored open candidates and extends each by M. A candidate that completes an answer leaves the
beam; the search ends when none is open, when N/M answers are complete, or at the depth limit. The answer: the
best-scored complete one."""
from __future__ import annotations

from lamina.decoding.searcher import Searcher
from lamina.decoding.tree import Node, score_key


async def beam(searcher: Searcher) -> Node | None:
    cfg = searcher.config
    keep = max(1, cfg.width // cfg.beam_width)
    root = await searcher.open()
    wants = [(root, cfg.width)]
    complete = 0
    while wants:
        groups = await searcher.expand(wants)
        children = [c for g in groups for c in g]
        complete += sum(c.finished for c in children)
        ranked = sorted((c for c in children if not c.finished), key=score_key, reverse=True)
        await searcher.drop(ranked[keep:])
        if complete >= keep or searcher.stopped:
            break
        wants = [(node, cfg.beam_width) for node in ranked[:keep]]
    return None
