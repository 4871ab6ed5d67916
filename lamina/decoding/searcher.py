"""The machinery every search algorithm shares: open the tree, expand nodes within the budget, score the children,
release what is dropped, and build the result.

    searcher = Searcher(backend, reward, messages, config, "beam")
    root = await searcher.open()
    groups = await searcher.expand([(root, 4)])       # [children of root], scored; [] when the budget allows none
    await searcher.drop(pruned)                       # give their KV blocks back
    result = await searcher.finish()                  # the best complete answer (or the best so far) + the tree

Budget: before an extension, its worst case (k children x max_tokens generated, k reward calls) must fit in what
is left of `config.max_tokens` / `config.max_reward_calls`; k is cut to what fits, and a cut sets `stopped` (the
result says so). So a search never spends more than its budget.
"""
from __future__ import annotations

import asyncio
import hashlib

from lamina.backends.base import Messages
from lamina.backends.branching import Branching, Step, TreeBlocks
from lamina.decoding.scoring import Reward, score_paths
from lamina.decoding.tree import Node, SearchConfig, SearchResult, SearchUsage, Tree, score_key
from lamina.engine.sampling_params import SamplingParams


def node_seed(seed: int, node_id: int) -> int:
    """The seed of a node's extension: stable across processes, distinct per node."""
    digest = hashlib.blake2b(f"{seed}/{node_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 2


class Searcher:
    def __init__(self, backend: Branching, reward: Reward, messages: Messages, config: SearchConfig,
                 algorithm: str) -> None:
        self.backend = backend
        self.reward = reward
        self.messages = messages
        self.config = config
        self.algorithm = algorithm
        self.tree = Tree()
        self.usage = SearchUsage()
        self.stopped: str | None = None
        self.handles: dict[int, str] = {}  # node id -> its live branch handle (nodes that may still be extended)
        self.blocks: TreeBlocks | None = None  # at the widest point so far

    async def open(self) -> Node:
        root = self.tree.add(None)
        self.handles[root.node_id] = await self.backend.open_tree(self.messages)
        return root

    def _affordable(self, wants: list[tuple[Node, int]], max_tokens: int) -> list[tuple[Node, int]]:
        """The extensions whose worst case fits the budget, in order; k cut to fit (setting `stopped`)."""
        cfg = self.config
        tokens_left = None if cfg.max_tokens is None else cfg.max_tokens - self.usage.completion_tokens
        calls_left = None if cfg.max_reward_calls is None else cfg.max_reward_calls - self.usage.reward_calls
        out = []
        for node, k in wants:
            fit = k
            if tokens_left is not None:
                fit = min(fit, tokens_left // max_tokens)
            if calls_left is not None:
                fit = min(fit, calls_left)
            if fit < k:
                what = (f"budget max_tokens={cfg.max_tokens}" if tokens_left is not None and
                        tokens_left // max_tokens < k else f"budget max_reward_calls={cfg.max_reward_calls}")
                self.stopped = f"{what} ran out: returned the best answer found so far"
            if fit <= 0:
                break
            out.append((node, fit))
            tokens_left = None if tokens_left is None else tokens_left - fit * max_tokens
            calls_left = None if calls_left is None else calls_left - fit
        return out

    def params(self, node: Node, k: int, whole: bool) -> SamplingParams:
        cfg = self.config
        max_tokens = cfg.step_max_tokens * cfg.depth if whole else cfg.step_max_tokens
        stop = None if whole else [cfg.delimiter]
        return SamplingParams(n=k, temperature=cfg.temperature, top_p=cfg.top_p, max_tokens=max_tokens, stop=stop,
                              include_stop_str_in_output=True, seed=node_seed(cfg.seed, node.node_id),
                              logprobs=cfg.logprobs)

    async def expand(self, wants: list[tuple[Node, int]], whole: bool = False) -> list[list[Node]]:
        """Extend each node by k children (one step; `whole`: a whole answer, no delimiter), scored. Groups follow
        the order of `wants`, cut by the budget (possibly to none). An expanded node's handle is released."""
        cfg = self.config
        max_tokens = cfg.step_max_tokens * cfg.depth if whole else cfg.step_max_tokens
        chosen = self._affordable(wants, max_tokens)
        results = await asyncio.gather(*(self.backend.extend(self.handles[node.node_id], self.params(node, k, whole))
                                         for node, k in chosen), return_exceptions=True)
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:  # release the children of the extensions that did succeed (no node holds them yet), then fail
            for steps in results:
                if not isinstance(steps, BaseException):
                    for step in steps:
                        await self.backend.release(step.handle)
            raise failed[0]
        groups: list[list[Node]] = []
        for (node, _), steps in zip(chosen, results):
            u = self.usage
            u.requests += steps.requests
            u.prompt_tokens += steps.prompt_tokens
            u.cached_prompt_tokens += steps.cached_prompt_tokens
            u.completion_tokens += steps.completion_tokens
            u.seconds += steps.seconds
            u.steps += len(steps)
            groups.append([self._child(node, step, whole) for step in steps])
        children = [c for g in groups for c in g]
        paths = [self.tree.path(c) for c in children]
        scores, calls = await score_paths(self.reward, self.messages, paths, [c.finished for c in children])
        self.usage.reward_calls += calls
        for child, score in zip(children, scores):
            child.score = score
        for node, _ in chosen:
            await self._release(node)
        await self._measure_blocks()  # the new children all still held: the search at its widest
        for child in children:
            if child.finished:
                await self._release(child)
        return groups

    def _child(self, parent: Node, step: Step, whole: bool) -> Node:
        ended = step.finish_reason == "stop" and not step.text.endswith(self.config.delimiter)
        node = self.tree.add(parent, text=step.text, num_tokens=step.num_tokens, finish_reason=step.finish_reason,
                             token_ids=step.token_ids, logprobs=step.logprobs)
        node.finished = whole or ended or node.depth >= self.config.depth
        if node.finished and not (whole or ended):
            node.finish_reason = "depth"
        self.handles[node.node_id] = step.handle
        return node

    async def drop(self, nodes: list[Node]) -> None:
        """Release the nodes the search will not extend (their KV blocks go back unless relatives share them)."""
        for node in nodes:
            await self._release(node)

    async def _release(self, node: Node) -> None:
        handle = self.handles.pop(node.node_id, None)
        if handle is not None:
            await self.backend.release(handle)

    async def _measure_blocks(self) -> None:
        if not self.handles:
            return
        blocks = await self.backend.tree_blocks(list(self.handles.values()))
        if blocks is not None and (self.blocks is None or blocks.num_used_blocks > self.blocks.num_used_blocks):
            self.blocks = blocks

    def answers(self) -> list[Node]:
        """The complete answers, best first."""
        return sorted((n for n in self.tree.nodes if n.finished), key=score_key, reverse=True)

    async def finish(self, chosen: Node | None = None) -> SearchResult:
        """Release every live node; the result with `chosen` as its answer (default: the best complete answer, else
        the best-scored partial one)."""
        await self.drop([self.tree.nodes[i] for i in list(self.handles)])
        answers = self.answers()
        if chosen is None:
            partial = sorted(self.tree.nodes[1:], key=score_key, reverse=True)
            chosen = answers[0] if answers else (partial[0] if partial else None)
        if chosen is not None and not chosen.finished and self.stopped is None:
            self.stopped = "no complete answer within the depth: returned the best partial one"
        text = "" if chosen is None else "".join(n.text for n in self.tree.path(chosen))
        return SearchResult(self.algorithm, text, None if chosen is None else chosen.node_id,
                            [n.node_id for n in answers], self.tree.nodes, self.usage, self.stopped, self.blocks)
