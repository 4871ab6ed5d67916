"""Seeds and call-cache keys come from a component's content (spec without its name, model, inputs, index among
identical siblings), not from its position: adding or removing a layer leaves the other components' samples
unchanged. The scripted backend's default reply is "sample <seed>/<index>", so equal texts mean equal seeds."""
from __future__ import annotations

from tests.archs import run_spec
from tests.scripted import ScriptedBackend

QUESTION = [{"role": "user", "content": "What is 2 + 2?"}]
MODELS = {"m": {"model": "scripted"}}
GEN4 = [{"type": "generate", "samples": 4}]
RANK = [{"type": "rank", "method": "pairwise"}]


def run(*layers, cache=False, rules=None):
    backend = ScriptedBackend(rules or {"Verdict:": "Verdict: correct", "better?": "A"})
    result = run_spec({"name": "s", "models": MODELS, "layers": list(layers)}, QUESTION, cache=cache,
                      backends={"m": backend})
    return result, backend


def seeds(backend, substring):
    return [c.params.seed for c in backend.made(substring)]


def test_a_layer_inserted_between_two_components_changes_neither():
    plain, plain_calls = run(GEN4, RANK)
    longer, longer_calls = run(GEN4, [{"type": "verify"}], RANK)  # verify passes every sample through
    assert plain_calls.calls[0].params.seed == longer_calls.calls[0].params.seed  # the generate
    assert seeds(plain_calls, "better?") == seeds(longer_calls, "better?")  # the rank: same inputs, same seeds
    assert len(seeds(plain_calls, "better?")) == 6 and plain.candidates == longer.candidates


def test_a_layer_inserted_in_front_of_a_generate_leaves_its_samples_unchanged():
    alone, _ = run(GEN4)
    behind, _ = run([{"type": "generate", "samples": 2, "name": "warmup"}], GEN4)
    assert behind.candidates == alone.candidates and len(set(alone.candidates)) == 4


def test_identical_siblings_sample_differently_and_names_are_display_only():
    twins, backend = run([{"type": "generate", "samples": 2}, {"type": "generate", "samples": 2}])
    assert len(set(twins.candidates)) == 4 and len(set(seeds(backend, "2 + 2"))) == 2
    named, _ = run([{"type": "generate", "samples": 2, "name": "a"}, {"type": "generate", "samples": 2, "name": "b"}])
    assert named.candidates == twins.candidates


def test_different_inputs_or_specs_draw_different_samples():
    base, base_calls = run(GEN4, RANK)
    other_rank, other_calls = run(GEN4, [{"type": "rank", "method": "pairwise", "use_critiques": True}])
    assert seeds(base_calls, "better?") != seeds(other_calls, "better?")  # another spec
    fewer, fewer_calls = run([{"type": "generate", "samples": 3}], RANK)
    assert fewer_calls.made("better?")[0].params.seed != base_calls.made("better?")[0].params.seed  # other inputs


def test_a_variant_reuses_the_cached_calls_of_the_components_it_shares(tmp_path):
    path = tmp_path / "calls.sqlite"
    run(GEN4, RANK, cache=path)
    variant, backend = run(GEN4, [{"type": "verify", "name": "check"}], RANK, cache=path)
    assert variant.usage.cached_calls == 1 + 6  # the generate and the six comparisons
    assert variant.usage.by_component["check"].calls == 4 and len(backend.calls) == 4
