"""What a step-level search builds and returns: its settings, its tree of nodes, its usage and its result.

A node is one step (the text one extension added, never the whole prefix); its answer text is the concatenation of
the steps on its path from the root. Scores come from the search's reward (higher is better, None: unscored).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lamina.backends.base import TokenLP
from lamina.backends.branching import TreeBlocks

ALGORITHMS = ("best_of_n", "beam", "dvts", "particle_filter", "astar")


@dataclass(frozen=True, slots=True)
class SearchConfig:
    """A search's settings.

    delimiter: the string that ends a step (default "\\n": one line per step, as the process verifiers of
      lamina.verifiers are trained; "\\n\\n" suits models that write paragraphs). step_max_tokens: a step's
      max_tokens. width: N, the paths kept at a time (best_of_n: samples; beam and dvts: candidates per step;
      particle_filter: particles; astar: open nodes kept, times beam_width). beam_width: M, children of an
      expanded node (beam keeps N/M nodes, dvts grows N/M subtrees). depth: most steps per answer (a node at that
      depth is an answer). temperature/top_p: sampling; seed: the search's (every extension's seed derives from it
      and the node's id, so a search is reproducible). resample_temperature: particle filtering's softmax
      temperature on the scores. weighted: best_of_n picks the answer whose extracted value has the largest summed
      score (weighted best-of-N) instead of the single best. logprobs: top logprobs per token to ask for (0: the
      sampled tokens'; a confidence reward needs them). max_tokens / max_reward_calls: the per-query budget in
      generated tokens and reward calls (None: unlimited); an extension is only made when its worst case fits.
    """

    delimiter: str = "\n"
    step_max_tokens: int = 64
    width: int = 4
    beam_width: int = 2
    depth: int = 8
    temperature: float = 0.8
    top_p: float = 1.0
    seed: int = 0
    resample_temperature: float = 1.0
    weighted: bool = False
    logprobs: int | None = 0
    max_tokens: int | None = None
    max_reward_calls: int | None = None


@dataclass(slots=True)
class Node:
    """One step. node_id: 0 for the root (the prompt, no text); parent_id: None for the root; num_tokens: tokens
    generated for this step; finished: a complete answer (ended by EOS or a stop token, or at the depth limit);
    finish_reason: the step's ("stop", "length", or "depth" when the depth limit ended it)."""

    node_id: int
    parent_id: int | None
    depth: int
    text: str = ""
    num_tokens: int = 0
    score: float | None = None
    finished: bool = False
    finish_reason: str | None = None
    token_ids: list[int] | None = None
    logprobs: list[TokenLP] | None = None

    def to_row(self) -> list[Any]:
        """[node_id, parent_id, text, score, num_tokens, finished]: the compact form kept in a trace."""
        score = None if self.score is None else round(self.score, 6)
        return [self.node_id, self.parent_id, self.text, score, self.num_tokens, self.finished]


@dataclass(slots=True)
class SearchUsage:
    """What a search spent: `steps` nodes generated, `requests` extension requests (each a call), prompt tokens
    (cost as if nothing was cached) and those served from the KV/prefix cache, generated tokens, reward calls (one
    per path scored by a model), seconds of extension wall time."""

    steps: int = 0
    requests: int = 0
    prompt_tokens: int = 0
    cached_prompt_tokens: int = 0
    completion_tokens: int = 0
    reward_calls: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}


def score_key(node: Node) -> tuple[float, int]:
    """Sort key, best first when descending: the score (None lowest), then the earlier node."""
    return (node.score if node.score is not None else float("-inf"), -node.node_id)


@dataclass(slots=True)
class SearchResult:
    """A search's outcome. answer: the chosen answer's text ("" when nothing was generated); answer_node: its node
    id; answers: ids of the complete answers, best first; nodes: every node, by id; stopped: None, or why the
    search stopped before it was done (its budget ran out; the answer is then the best found so far); blocks: the
    local engine's KV blocks at the search's widest point against a copy per path (None elsewhere)."""

    algorithm: str
    answer: str
    answer_node: int | None
    answers: list[int]
    nodes: list[Node]
    usage: SearchUsage
    stopped: str | None = None
    blocks: TreeBlocks | None = None

    def path(self, node_id: int) -> list[Node]:
        """The nodes from the root's first step down to `node_id`."""
        return path_of(self.nodes, node_id)

    def text(self, node_id: int) -> str:
        return "".join(n.text for n in self.path(node_id))

    @property
    def score(self) -> float | None:
        return None if self.answer_node is None else self.nodes[self.answer_node].score

    def to_trace(self) -> dict[str, Any]:
        """The compact tree: nodes as [id, parent, step text, score, tokens, finished] rows (no repeated prefixes)."""
        blocks = None if self.blocks is None else {"used": self.blocks.num_used_blocks,
                                                    "copy_per_path": self.blocks.num_copy_per_path_blocks}
        return {"algorithm": self.algorithm, "answer_node": self.answer_node, "answers": self.answers,
                "stopped": self.stopped, "usage": self.usage.to_dict(), "kv_blocks": blocks,
                "nodes": [n.to_row() for n in self.nodes]}


@dataclass(slots=True)
class Tree:
    """The nodes of one search, by id (node_id == index)."""

    nodes: list[Node] = field(default_factory=list)

    def add(self, parent: Node | None, **fields: Any) -> Node:
        node = Node(len(self.nodes), None if parent is None else parent.node_id,
                    0 if parent is None else parent.depth + 1, **fields)
        self.nodes.append(node)
        return node

    def path(self, node: Node) -> list[Node]:
        return path_of(self.nodes, node.node_id)


def path_of(nodes: list[Node], node_id: int) -> list[Node]:
    """The nodes from the root's first step down to `node_id` (the root itself has no step: [])."""
    out = []
    node = nodes[node_id]
    while node.parent_id is not None:
        out.append(node)
        node = nodes[node.parent_id]
    return out[::-1]
