"""A*-decoding (arXiv 2505.13672, "A*-Decoding: Token-Efficient Inference Scaling"): best-first search over
partial answers with the process reward as the priority. The open set starts with the root's M (= beam_width)
children; each round pops the best-scored node: a complete answer ends the search (it is the answer), an open one
is extended by M children, which join the open set. The open set is capped at width x M nodes (the worst are
dropped, freeing their KV blocks). The search also ends when the open set is empty, after width x depth
expansions, or when the budget runs out (the answer is then the best found so far)."""
from __future__ import annotations

from lamina.decoding.searcher import Searcher
from lamina.decoding.tree import Node, score_key


async def astar(searcher: Searcher) -> Node | None:
    cfg = searcher.config
    cap = max(1, cfg.width * cfg.beam_width)
    root = await searcher.open()
    frontier = [c for g in await searcher.expand([(root, cfg.beam_width)]) for c in g]
    for _ in range(cfg.width * cfg.depth):
        if not frontier or searcher.stopped:
            break
        frontier.sort(key=score_key, reverse=True)
        await searcher.drop(frontier[cap:])
        best, frontier = frontier[0], frontier[1:cap]
        if best.finished:
            return best
        frontier += [c for g in await searcher.expand([(best, cfg.beam_width)]) for c in g]
    return None
