"""Step-level search (lamina.decoding) on a scripted tree and reward: each algorithm finds the known optimum,
respects its budget and says when it stopped early, releases every node, and a sampled search is reproducible."""
from __future__ import annotations

import asyncio

import pytest

from lamina.decoding import ALGORITHMS, SearchConfig, search
from lamina.decoding.particle_filter import resample_weights
from tests.scripted_tree import DigitSum, ScriptedTree

MESSAGES = [{"role": "user", "content": "q"}]
# children 3, 4, ... of a node all say "3\n": the optimum is "3\n" at every step (best_of_n: samples 3, 4, ...)
CONFIG = SearchConfig(width=16, beam_width=4, depth=6, step_max_tokens=4, resample_temperature=0.01)
OPTIMUM = "3\n3\n3\ndone"


def run(algorithm: str, config: SearchConfig = CONFIG, backend: ScriptedTree | None = None):
    backend = backend or ScriptedTree()
    reward = DigitSum()
    result = asyncio.run(search(algorithm, backend, reward, MESSAGES, config))
    assert backend.nodes == {}, "every node must be released"
    return result, backend, reward


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_each_algorithm_finds_the_known_optimum(algorithm):
    result, backend, reward = run(algorithm)
    assert result.answer == OPTIMUM and result.stopped is None
    assert result.score == 9.0
    assert result.usage.reward_calls == reward.scored == len(result.nodes) - 1
    assert result.usage.requests == len(backend.requests)
    assert result.usage.completion_tokens == sum(n.num_tokens for n in result.nodes)
    assert result.usage.steps == len(result.nodes) - 1
    rows = result.to_trace()["nodes"]
    assert rows[0] == [0, None, "", None, 0, False]
    if algorithm != "best_of_n":  # best-of-N's steps are whole answers
        assert all(len(row[2]) <= len("done") for row in rows), "the trace keeps steps, not whole prefixes"


def test_beam_keeps_n_over_m_and_dvts_grows_independent_subtrees():
    config = SearchConfig(width=4, beam_width=2, depth=6, step_max_tokens=4)
    beam, backend, _ = run("beam", config)
    assert [p.n for _, p in backend.requests] == [4] + [2] * 6  # root: N; then N/M kept nodes x 3 steps, M children
    assert beam.answer == "3\n1\n1\ndone"
    dvts, backend, _ = run("dvts", config)
    assert [p.n for _, p in backend.requests] == [2, 2, 2, 2, 2, 2, 2]  # N/M subtrees, M children per step
    assert sorted({dvts.text(i) for i in dvts.answers}) == ["0\n1\n1\ndone", "1\n1\n1\ndone"]


def test_weighted_best_of_n_sums_scores_per_extracted_answer():
    from lamina.decoding.best_of_n import weighted_choice
    from lamina.decoding.tree import Node

    nodes = [Node(1, 0, 1, score=0.9), Node(2, 0, 1, score=0.5), Node(3, 0, 1, score=0.6)]
    texts = {1: "the answer is 7", 2: "the answer is 5", 3: "the answer is 5"}
    assert weighted_choice(nodes, texts).node_id == 3  # 5: 0.5 + 0.6 > 7: 0.9
    # log-probability rewards (all <= 0) weigh as probabilities: agreement adds weight instead of taking it away
    logs = [Node(1, 0, 1, score=-0.5), Node(2, 0, 1, score=-1.0), Node(3, 0, 1, score=-0.9)]
    assert weighted_choice(logs, texts).node_id == 3  # 5: e^-1 + e^-0.9 = 0.77 > 7: e^-0.5 = 0.61
    result, _, _ = run("best_of_n", SearchConfig(width=4, depth=6, step_max_tokens=4, weighted=True))
    assert result.answer == OPTIMUM  # every sample extracts to "done": the group's best-scored one


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("limit", ["tokens", "reward_calls"])
def test_the_budget_is_never_exceeded_and_an_early_stop_is_reported(algorithm, limit):
    calls, tokens = (2, 50) if algorithm == "best_of_n" else (5, 9)  # best-of-N's worst case: 24 tokens a sample
    budget = {"max_tokens": tokens} if limit == "tokens" else {"max_reward_calls": calls}
    result, _, _ = run(algorithm, _with(CONFIG, **budget))
    assert result.usage.completion_tokens <= budget.get("max_tokens", 10**9)
    assert result.usage.reward_calls <= budget.get("max_reward_calls", 10**9)
    assert result.stopped and "ran out" in result.stopped and ("max_tokens" if limit == "tokens" else
                                                              "max_reward_calls") in result.stopped
    assert result.answer_node is not None and result.answer, "the best answer so far is still returned"


def _with(config: SearchConfig, **changes) -> SearchConfig:
    from dataclasses import replace

    return replace(config, **changes)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_a_sampled_search_with_one_seed_gives_the_same_tree(algorithm):
    config = _with(CONFIG, seed=5, resample_temperature=1.0)
    trees = [run(algorithm, config, ScriptedTree(sampled=True))[0].to_trace() for _ in range(2)]
    assert trees[0] == trees[1]
    other = run(algorithm, _with(config, seed=6), ScriptedTree(sampled=True))[0].to_trace()
    assert other["nodes"] != trees[0]["nodes"]


def test_resample_weights_are_a_softmax_with_temperature():
    assert resample_weights([1.0, 1.0], 1.0) == [0.5, 0.5]
    sharp = resample_weights([0.0, 1.0], 0.1)
    assert sharp[1] > 0.99 and sum(sharp) == pytest.approx(1.0)
    assert resample_weights([None, 2.0, 0.0], 1.0)[0] == pytest.approx(resample_weights([None, 2.0, 0.0], 1.0)[2])
    assert resample_weights([None, None], 1.0) == [0.5, 0.5]


def test_an_unknown_algorithm_is_a_clear_error():
    with pytest.raises(ValueError, match="algorithm must be one of"):
        asyncio.run(search("greedy", ScriptedTree(), DigitSum(), MESSAGES))


def test_a_failed_extension_releases_the_children_of_the_ones_that_succeeded():
    class FailsAtDepth2(ScriptedTree):
        depth1 = 0

        async def extend(self, handle, params):
            steps = await super().extend(handle, params)
            if self.nodes[handle][1] == 1:
                self.depth1 += 1
                if self.depth1 == 2:  # the second of the depth-1 nodes' concurrent extensions fails
                    for step in steps:
                        del self.nodes[step.handle]
                    raise RuntimeError("the engine failed a step")
            return steps

    backend = FailsAtDepth2()
    with pytest.raises(RuntimeError, match="failed a step"):
        asyncio.run(search("beam", backend, DigitSum(), MESSAGES, SearchConfig(width=4, beam_width=2, depth=6,
                                                                               step_max_tokens=4)))
    assert backend.nodes == {}, "the succeeded extensions' children must be released"
