"""Step-level search decoding: grow answers a step at a time and spend compute on the promising partial ones.

    result = await search("beam", backend, reward, messages, SearchConfig(width=8, beam_width=2, depth=6))
    result.answer, result.score, result.stopped, result.usage, result.blocks, result.to_trace()

Algorithms (one file each): best_of_n (and weighted best-of-N), beam, dvts, particle_filter, astar. They run on
any backend with branches (lamina.backends.branching: the local engine natively, OpenAI-compatible servers by
emulation) and score with any reward of lamina.rewards (process rewards score partial answers).

Layering: techniques -> decoding -> rewards, backends, answers -> engine; decoding never imports techniques,
calls, the runner, eval or the server.
"""
from __future__ import annotations

from typing import Awaitable, Callable

from lamina.backends.base import Messages
from lamina.backends.branching import Branching
from lamina.decoding.astar import astar
from lamina.decoding.beam import beam
from lamina.decoding.best_of_n import best_of_n
from lamina.decoding.dvts import dvts
from lamina.decoding.particle_filter import particle_filter
from lamina.decoding.scoring import Reward
from lamina.decoding.searcher import Searcher
from lamina.decoding.tree import ALGORITHMS, Node, SearchConfig, SearchResult, SearchUsage

Algorithm = Callable[[Searcher], Awaitable[Node | None]]
SEARCHES: dict[str, Algorithm] = {"best_of_n": best_of_n, "beam": beam, "dvts": dvts,
                                  "particle_filter": particle_filter, "astar": astar}
assert tuple(SEARCHES) == ALGORITHMS

__all__ = ["ALGORITHMS", "SEARCHES", "Node", "SearchConfig", "SearchResult", "SearchUsage", "search"]


async def search(algorithm: str, backend: Branching, reward: Reward, messages: Messages,
                 config: SearchConfig | None = None) -> SearchResult:
    """Run one search for the conversation `messages`; ValueError for an unknown algorithm. The nodes it holds are
    released when it ends, also when it fails."""
    if algorithm not in SEARCHES:
        raise ValueError(f"algorithm must be one of {', '.join(ALGORITHMS)}, got {algorithm!r}")
    searcher = Searcher(backend, reward, messages, config or SearchConfig(), algorithm)
    try:
        chosen = await SEARCHES[algorithm](searcher)
    except BaseException:
        await searcher.drop([searcher.tree.nodes[i] for i in list(searcher.handles)])
        raise
    return await searcher.finish(chosen)
