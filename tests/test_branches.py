"""Branch API (issue 12): open, extend one step into n children sharing blocks, read, release; pinned until memory runs
short, then recomputed; a seeded tree is the same whatever else runs; bad ids get one-line errors."""
from __future__ import annotations

import asyncio
import time

import pytest

from lamina import LLM, AsyncEngine, SamplingParams
from lamina.errors import InvalidRequestError
from tests.conftest import assert_pool_full

PROMPT = "The quick brown fox jumps over the lazy dog. Then the fox ran into the forest and"
STEP = SamplingParams(temperature=0, max_tokens=5, ignore_eos=True)
SAMPLED = SamplingParams(n=2, temperature=1.0, seed=7, max_tokens=4, ignore_eos=True)


def release_all(llm) -> None:
    for branch_id in list(llm.engine.branches.branches):
        llm.release_branch(branch_id)
    assert_pool_full(llm)


@pytest.fixture
def llm(tiny_llm):
    yield tiny_llm
    release_all(tiny_llm)


def test_extend_fork_release_leave_the_pool_whole_and_children_share_blocks(llm):
    root = llm.open_branch(PROMPT)
    assert root.output_token_ids == [] and root.resident and root.finish_reason is None
    children = llm.extend_branch(root.branch_id, SamplingParams(n=3, temperature=1.0, seed=1, max_tokens=6,
                                                                ignore_eos=True))
    assert [c.branch_id for c in children] == [f"{root.branch_id}.{i}" for i in range(3)]
    assert all(len(c.step_token_ids) == 6 and c.token_ids == root.token_ids + c.step_token_ids for c in children)
    assert all(c.finish_reason == "length" and len(c.step_logprobs) == 6 for c in children)
    assert children[0].cumulative_logprob == pytest.approx(sum(lp.logprob for lp in children[0].step_logprobs))
    grandchildren = llm.extend_branch(children[0].branch_id, SAMPLED)
    assert all(g.path == (0, i) and g.output_token_ids[:6] == children[0].step_token_ids
               for i, g in enumerate(grandchildren))
    usage = llm.branch_blocks()
    assert usage.num_used_blocks < usage.num_copy_per_path_blocks
    assert llm.engine.num_free_blocks == llm.engine.num_total_blocks - usage.num_used_blocks
    llm.release_branch(root.branch_id)  # children keep the blocks they share with it
    assert llm.branch(children[1].branch_id).token_ids == children[1].token_ids
    release_all(llm)


def test_greedy_branch_extended_step_by_step_matches_one_request(llm):
    whole = llm.generate(PROMPT, STEP.replace(max_tokens=20))[0].outputs[0]
    branch = llm.open_branch(PROMPT)
    for _ in range(4):
        (branch,) = llm.extend_branch(branch.branch_id, STEP)
    assert branch.output_token_ids == whole.token_ids
    assert branch.text == whole.text


def tree(extend, open_) -> list[tuple[tuple[int, ...], list[int]]]:
    """A sampled depth-2 tree with two children per node, as (path, step tokens) pairs."""
    root = open_(PROMPT)
    level, nodes = [root], []
    for _ in range(2):
        level = [child for node in level for child in extend(node.branch_id, SAMPLED)]
        nodes += [(c.path, c.step_token_ids) for c in level]
    return nodes


def test_a_seeded_tree_is_the_same_twice_and_with_other_requests_running(llm):
    first = tree(llm.extend_branch, llm.open_branch)
    release_all(llm)
    assert tree(llm.extend_branch, llm.open_branch) == first
    assert len({tuple(tokens) for _, tokens in first}) > 1, "children should differ"
    release_all(llm)
    engine = AsyncEngine.from_llm(llm)

    async def concurrently():
        async def noise(i: int) -> None:
            params = SamplingParams(temperature=0.8, seed=i, max_tokens=30, ignore_eos=True)
            async for _ in engine.generate(f"{i} other text running alongside", params):
                pass

        async def open_(prompt):
            return await engine.open_branch(prompt)

        async def extend(branch_id, params):
            return await engine.extend_branch(branch_id, params)

        nodes: list = []

        async def search():
            root = await open_(PROMPT)
            level = [root]
            for _ in range(2):
                level = [c for node in level for c in await extend(node.branch_id, SAMPLED)]
                nodes.extend((c.path, c.step_token_ids) for c in level)
            for branch_id in list(engine.engine.branches.branches):
                await engine.release_branch(branch_id)

        await asyncio.gather(search(), *(noise(i) for i in range(3)))
        return nodes

    try:
        assert asyncio.run(concurrently()) == first
    finally:
        engine.shutdown()


def test_parked_branches_survive_memory_pressure_by_recompute(tiny_llama_dir):
    small = LLM(str(tiny_llama_dir), num_kv_blocks=16, block_size=4)
    prompts = [f"{i}: {PROMPT}" for i in range(5)]  # about 5 blocks each: 25 blocks of parked branches > 16
    expected = [o.outputs[0].token_ids for o in small.generate(prompts, STEP)]
    roots = [small.open_branch(p) for p in prompts]
    assert not small.branch(roots[0].branch_id).resident, "the oldest parked branch should have been dropped"
    children = [small.extend_branch(r.branch_id, STEP)[0] for r in roots]
    assert [c.step_token_ids for c in children] == expected
    release_all(small)


def test_bad_branch_ids_get_one_line_errors(llm):
    with pytest.raises(InvalidRequestError, match="branch 'nope' is unknown or was released"):
        llm.extend_branch("nope", STEP)
    root = llm.open_branch(PROMPT, branch_id="root")
    with pytest.raises(InvalidRequestError, match="branch id 'root' is already in use"):
        llm.open_branch(PROMPT, branch_id="root")
    llm.extend_branch("root", STEP)
    with pytest.raises(InvalidRequestError, match="already has children"):
        llm.extend_branch("root", STEP)
    pending = llm.engine.open_branch(PROMPT)
    with pytest.raises(InvalidRequestError, match="still being computed"):
        llm.branch(pending)
    llm._run_branch(pending)
    llm.release_branch(root.branch_id)
    for call in (lambda: llm.branch("root"), lambda: llm.release_branch("root"), lambda: llm.extend_branch("root")):
        with pytest.raises(InvalidRequestError, match="branch 'root' is unknown or was released"):
            call()
    with pytest.raises(InvalidRequestError, match="SamplingParams"):
        llm.extend_branch(pending, {"n": 2})  # type: ignore[arg-type]


def test_greedy_steps_match_one_request_on_the_real_model(real_llm):
    prompt = real_llm.tokenizer.apply_chat_template([{"role": "user", "content": "Count from one to ten."}])
    step = SamplingParams(temperature=0, max_tokens=8)
    whole = real_llm.generate(prompt, step.replace(max_tokens=24))[0].outputs[0]
    branch = real_llm.open_branch(prompt)
    for _ in range(3):
        (branch,) = real_llm.extend_branch(branch.branch_id, step)
        if branch.finish_reason == "stop":
            break
    assert branch.output_token_ids == whole.token_ids and branch.text == whole.text
    release_all(real_llm)


def test_an_aborted_extension_releases_its_children(llm):
    root = llm.open_branch(PROMPT)
    extension = llm.engine.extend_branch(root.branch_id, SAMPLED.replace(max_tokens=50))
    llm.engine.step()
    llm.engine.abort(extension.request_id)
    assert not llm.engine.is_branch_pending(extension.request_id)
    with pytest.raises(InvalidRequestError, match="unknown or was released"):
        llm.branch(extension.branch_ids[0])
    assert llm.branch_blocks().num_used_blocks == llm.branch_blocks([root.branch_id]).num_used_blocks


class _FailingStep:
    """Wraps the model runner: the first run whose batch prefills a prompt raises (as a kernel error mid-search
    would), or the first run at all with `any_batch`."""

    def __init__(self, runner, any_batch: bool = False, step_delay: float = 0.0) -> None:
        self.runner, self.any_batch, self.failed, self.step_delay = runner, any_batch, False, step_delay

    def run(self, batch, *args):
        if not self.failed and (self.any_batch or batch.prefills):
            self.failed = True
            raise RuntimeError("injected step failure")
        time.sleep(self.step_delay)  # keeps a running extension going past the moment the test submits more
        return self.runner.run(batch, *args)


def test_a_failed_step_fails_pending_openings_and_extensions_and_leaves_nothing_scheduled(llm):
    engine = AsyncEngine.from_llm(llm)
    real = llm.engine.runner

    async def go():
        root = await engine.open_branch(PROMPT)
        # fails the step that prefills the opening, mid-way through the extension (40 steps of >= 10 ms: the
        # native decode step finishes 40 tiny-model tokens well inside the 50 ms wait below without the delay)
        llm.engine.runner = _FailingStep(real, step_delay=0.01)
        extension = asyncio.ensure_future(engine.extend_branch(root.branch_id, SAMPLED.replace(max_tokens=40)))
        await asyncio.sleep(0.05)
        opening = asyncio.ensure_future(engine.open_branch("another prompt opened while the step fails " * 3))
        results = await asyncio.gather(extension, opening, return_exceptions=True)
        llm.engine.runner = real
        await engine.release_branch(root.branch_id)
        after = await engine.open_branch(PROMPT)  # the engine still works
        await engine.release_branch(after.branch_id)
        return results

    try:
        results = asyncio.run(asyncio.wait_for(go(), 60))
    finally:
        llm.engine.runner = real
        engine.shutdown()
    assert all(isinstance(r, RuntimeError) and "injected" in str(r) for r in results), results
    scheduler = llm.engine.scheduler
    assert not scheduler.running and not scheduler.waiting and not llm.engine.branches.pending
    assert list(llm.engine.branches.branches) == []


def test_a_failed_step_under_llm_forgets_the_opening(llm):
    real = llm.engine.runner
    llm.engine.runner = _FailingStep(real, any_batch=True)
    try:
        with pytest.raises(RuntimeError, match="injected"):
            llm.open_branch(PROMPT)
    finally:
        llm.engine.runner = real
    assert not llm.engine.scheduler.running and not llm.engine.scheduler.waiting
    assert not llm.engine.branches.pending and list(llm.engine.branches.branches) == []
