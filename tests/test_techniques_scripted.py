"""Every technique branch on a scripted backend (canned replies, every call's messages and sampling params
recorded): verdicts, rankings, scores parsed or not, fallbacks, votes, unit tests, first_finish, precedence."""
from __future__ import annotations

import math

import pytest

from lamina.backends.base import Completion, TokenLP
from lamina.errors import InvalidRequestError, SpecError
from lamina.spec import parse_spec

from tests.archs import run_spec
from tests.scripted import ScriptedBackend

QUESTION = [{"role": "user", "content": "What is 2 + 2?"}]
MODELS = {"m": {"model": "scripted"}}

VERIFY = "Check the reasoning of the response"
LISTWISE = "Rank the responses from best to worst"
PAIRWISE = "Which response is better?"
CRITIQUE = "strengths and the weaknesses"
JUDGE = "Rate how good and correct"
VERDICT = "Is the response correct? Answer Yes or No."
FUSE = "write one best answer"
WRITE_TESTS = "Python assert statements"
CHECK = "Does the response satisfy this check"


def run(layers, rules=None, *, models=MODELS, tests=None, cache=False, backend=None, **extra):
    """Run `layers` on a scripted backend; returns (result, backend)."""
    backend = backend or ScriptedBackend(rules)
    spec = {"name": "scripted", "models": models, "layers": layers, **extra}
    return run_spec(spec, QUESTION, tests=tests, cache=cache, backends={"m": backend}), backend


def given(*texts):
    """A first layer whose generate draws exactly these samples."""
    return [{"type": "generate", "samples": len(texts), "name": "gen"}], {"2 + 2?": list(texts)}


def settings(call):
    p = call.params
    return {"temperature": p.temperature, "top_p": p.top_p, "max_tokens": p.max_tokens, "stop": p.stop}


def test_judges_keep_their_built_in_settings_over_the_alias_generation_defaults():
    models = {"m": {"model": "scripted", "params": {"temperature": 0.8, "top_p": 0.9, "max_tokens": 300,
                                                    "stop": ["###"]}}}
    layers = [[{"type": "generate", "samples": 2}], [{"type": "verify"}], [{"type": "critique"}],
              [{"type": "rank"}], [{"type": "reward"}], [{"type": "unit_test", "source": "generate"}],
              [{"type": "verify", "temperature": 0.3, "max_tokens": 20, "name": "set"}], [{"type": "fuse"}]]
    rules = {VERIFY: "Verdict: correct", CRITIQUE: "fine", LISTWISE: "[2] > [1]", JUDGE: "7",
             WRITE_TESTS: "assert True", FUSE: "4"}
    result, backend = run(layers, rules, models=models)
    alias = {"top_p": 0.9, "stop": ["###"]}  # what no technique fixes still comes from the alias
    generative = {**alias, "temperature": 0.8, "max_tokens": 300}
    assert settings(backend.calls[0]) == generative  # generate
    assert settings(backend.made(FUSE)[0]) == generative
    for key, max_tokens in ((CRITIQUE, 96), (LISTWISE, 32), (JUDGE, 8), (WRITE_TESTS, 128)):
        assert {settings(c)["max_tokens"] for c in backend.made(key)} == {max_tokens}, key
        assert all(settings(c) == {**alias, "temperature": 0.0, "max_tokens": max_tokens} for c in backend.made(key))
    first, second = backend.made(VERIFY)[:2], backend.made(VERIFY)[2:]
    assert all(settings(c) == {**alias, "temperature": 0.0, "max_tokens": 64} for c in first)
    assert all(settings(c) == {**alias, "temperature": 0.3, "max_tokens": 20} for c in second)  # the component wins
    assert result.answer == "4"


def notes(result, component=None):
    """The fallback notes a technique recorded in the trace (the trace is where notes live)."""
    return [e for e in result.trace if e["event"] == "note" and component in (None, e["component"])]


def texts(candidates):
    return [c.text for c in candidates]


# --- typed results --------------------------------------------------------------------------------------------

def test_the_result_carries_each_layer_s_candidates():
    first, rules = given("four", "five", "four")
    result, _ = run([first, [{"type": "verify", "name": "check"}]], {VERIFY: "Verdict: correct", **rules})
    assert [(layer.index, layer.components) for layer in result.layers] == [(0, ["gen"]), (1, ["check"])]
    samples = result.first_layer_samples()
    assert texts(samples) == ["four", "five", "four"] == texts(result.layers[1].candidates)
    assert all(c.source == "gen" and c.model == "m" and c.finish_reason == "stop" for c in samples)
    assert result.to_dict()["layers"][0]["candidates"][1]["text"] == "five"


def test_a_layer_stopped_by_the_budget_is_absent_from_the_result():
    first, rules = given("four", "five")
    result, _ = run([first, [{"type": "verify"}]], rules, budget={"max_calls": 1, "on_exceed": "stop"})
    assert result.stopped_by_budget and [layer.index for layer in result.layers] == [0]


# --- verify ---------------------------------------------------------------------------------------------------

def test_verify_keeps_yes_drops_no_and_counts_an_unparseable_verdict_as_passing():
    first, rules = given("four", "five", "seven")
    verdicts = {"Response: four": "2 + 2 = 4. Verdict: correct", "Response: five": "Verdict: incorrect",
                "Response: seven": "I am not sure."}
    result, backend = run([first, [{"type": "verify", "name": "v"}]], {**verdicts, **rules})
    assert result.candidates == ["four", "seven"] and len(backend.made(VERIFY)) == 3
    (note,) = notes(result, "v")
    assert note["fallback"] == "unparsed verdict" and note["candidate"] == 2


@pytest.mark.parametrize("fallback,kept", [("keep_all", ["four", "five"]), ("keep_first", ["four"]), ("none", [])])
def test_verify_falls_back_by_the_declared_rule_when_nothing_passes(fallback, kept):
    first, rules = given("four", "five")
    result, _ = run([first, [{"type": "verify", "fallback": fallback, "name": "v"}]],
                    {VERIFY: "Verdict: incorrect", **rules})
    assert result.candidates == kept and result.answer == (kept[0] if kept else "")
    assert notes(result, "v")[-1] == {"event": "note", "component": "v", "fallback": "no candidate verified",
                                      "rule": fallback}


# --- rank -----------------------------------------------------------------------------------------------------

def test_listwise_rank_follows_the_parsed_order_and_keeps_top_k():
    first, rules = given("alpha", "beta", "gamma")
    result, backend = run([first, [{"type": "rank", "top_k": 2}]], {LISTWISE: "Best: [3] > [1] > [2]", **rules})
    assert result.candidates == ["gamma", "alpha"]
    (call,) = backend.made(LISTWISE)
    assert "[1] alpha\n\n[2] beta\n\n[3] gamma" in call.prompt


def test_listwise_rank_keeps_the_input_order_when_the_ranking_is_unparseable():
    first, rules = given("alpha", "beta", "gamma")
    result, _ = run([first, [{"type": "rank", "name": "r"}]], {LISTWISE: "They are all fine.", **rules})
    assert result.candidates == ["alpha", "beta", "gamma"]
    assert notes(result, "r")[0]["fallback"] == "unparsed ranking"


def prefer(order):
    """A pairwise judge preferring candidates earlier in `order`; pairs it has no opinion on get a shrug."""
    def judge(prompt, params, index):
        a = prompt.split("Response A: ")[1].split("\n")[0]
        b = prompt.split("Response B: ")[1].split("\n")[0]
        if a not in order or b not in order:
            return "Both are fine."
        return "A" if order.index(a) < order.index(b) else "B"
    return judge


def test_pairwise_rank_counts_wins_and_half_a_win_for_an_unparseable_comparison():
    first, rules = given("alpha", "beta", "gamma", "delta")
    result, backend = run([first, [{"type": "rank", "method": "pairwise", "name": "r"}]],
                          {PAIRWISE: prefer(["gamma", "beta", "alpha"]), **rules})
    # wins: gamma 2 + .5, beta 1 + .5, alpha 0 + .5, delta 1.5 (three shrugs); a tie keeps the input order
    assert result.candidates == ["gamma", "beta", "delta", "alpha"] and len(backend.made(PAIRWISE)) == 6
    assert sorted(tuple(n["pair"]) for n in notes(result, "r")) == [(0, 3), (1, 3), (2, 3)]


# --- reward ---------------------------------------------------------------------------------------------------

def test_reward_judge_scores_parsed_ratings_and_sorts_the_unscored_last():
    first, rules = given("alpha", "beta", "gamma")
    ratings = {"Response: alpha": "Rating: 3", "Response: beta": "9/10", "Response: gamma": "I cannot rate it."}
    result, _ = run([first, [{"type": "reward", "name": "rw"}]], {**ratings, **rules})
    assert [(c.text, c.score) for c in result.final] == [("beta", 9.0), ("alpha", 3.0), ("gamma", None)]
    assert [n["candidate"] for n in notes(result, "rw")] == [2]
    top, _ = run([first, [{"type": "reward", "top_k": 1}]], {**ratings, **rules})
    assert top.candidates == ["beta"]


def verdict_token(p_yes, p_no):
    top = {"Yes": math.log(p_yes), "No": math.log(p_no)} if p_yes else {"Maybe": -0.1}
    first = next(iter(top))
    return Completion(first, 1, [TokenLP(first, top[first], top)], "length")


@pytest.mark.parametrize("layer", [{"type": "reward", "mode": "logprob"},
                                   {"type": "rank", "method": "reward", "reward_mode": "logprob"}])
def test_scores_by_verdict_logprob_are_p_yes_over_p_yes_plus_p_no(layer):
    first, rules = given("alpha", "beta", "gamma")
    tokens = {"Response: alpha": verdict_token(0.2, 0.6), "Response: beta": verdict_token(0.6, 0.2),
              "Response: gamma": verdict_token(None, None)}
    result, backend = run([first, [layer]], {**tokens, **rules})
    assert [c.text for c in result.final] == ["beta", "alpha", "gamma"]
    assert [c.score for c in result.final] == [pytest.approx(0.75), pytest.approx(0.25), None]
    made = {(c.params.max_tokens, c.params.temperature, c.params.logprobs) for c in backend.made(VERDICT)}
    assert made == {(1, 0.0, 20)}


# --- critique and fuse ----------------------------------------------------------------------------------------

def test_critiques_are_attached_and_shown_to_the_fuser():
    first, rules = given("four", "five")
    critiques = {f"Response: {t}\n\nList the strengths": f"{t} is {verdict}"
                 for t, verdict in (("four", "right"), ("five", "wrong"))}
    result, backend = run([first, [{"type": "critique", "name": "c"}], [{"type": "fuse", "samples": 2, "name": "f"}]],
                          {**critiques, FUSE: ["It is 4.", "4"], **rules})
    assert [(c.text, c.critique) for c in result.layers[1].candidates] == [("four", "four is right"),
                                                                          ("five", "five is wrong")]
    (fuse,) = backend.made(FUSE)
    assert "some responses with critiques" in fuse.prompt and fuse.params.n == 2
    assert "[1] four\nCritique of [1]: four is right\n\n[2] five\nCritique of [2]: five is wrong" in fuse.prompt
    assert [(c.text, c.source) for c in result.final] == [("It is 4.", "f"), ("4", "f")]


def test_fuse_shows_only_its_top_k_and_without_candidates_answers_the_query():
    first, rules = given("four", "five", "six")
    _, backend = run([first, [{"type": "fuse", "top_k": 2, "use_critiques": False}]], {FUSE: "4", **rules})
    (fuse,) = backend.made(FUSE)
    assert "[2] five" in fuse.prompt and "six" not in fuse.prompt and "critiques" not in fuse.prompt
    alone, backend = run([[{"type": "fuse", "name": "f"}]], {"2 + 2?": "4"})
    assert alone.answer == "4" and backend.calls[0].messages == QUESTION
    assert notes(alone, "f")[0]["fallback"] == "nothing to fuse"


# --- vote -----------------------------------------------------------------------------------------------------

def test_majority_vote_on_sampled_answers():
    first, rules = given("It is 4.", "5", "so 4", "maybe 5")
    result, backend = run([first, [{"type": "vote", "extract": "number", "keep": "all"}]], rules)
    assert [(c.text, c.answer) for c in result.final] == [("It is 4.", "4"), ("so 4", "4"), ("5", "5"),
                                                           ("maybe 5", "5")]
    assert len(backend.calls) == 1  # the vote asks no model


def test_regex_vote_groups_by_the_pattern_group_and_bad_settings_name_the_field():
    first, rules = given("Answer: B (because)", "answer: c", "I pick Answer: C", "Answer: B")
    vote = {"type": "vote", "extract": "regex", "pattern": r"(?i)answer:\s*([a-d])", "keep": "all"}
    result, _ = run([first, [vote]], rules)
    # keys are the captured letters under the text normalisation: 'B' twice, then 'c' twice (ties go to the first seen)
    assert [c.answer for c in result.final] == ["b", "b", "c", "c"]
    for bad, field in (({"pattern": "(unclosed"}, "pattern"), ({"pattern": "x(y)", "group": 3}, "group"),
                       ({"extract": "number", "pattern": "x"}, "pattern")):
        with pytest.raises(SpecError, match=field):
            parse_spec({"name": "bad", "layers": [first, [{**vote, **bad}]]})


def sure(text, logprob):
    return Completion(text, 1, [TokenLP(text, logprob, {text: logprob})], "stop")


def test_best_of_majority_takes_the_most_likely_member_of_the_majority():
    samples = [sure("4 (a)", -2.0), sure("5", -0.1), sure("4 (b)", -0.5), sure("4 (c)", -1.0)]
    layers = [[{"type": "generate", "samples": 4, "logprobs": 1}],
              [{"type": "vote", "method": "best_of_majority", "extract": "number"}]]
    result, _ = run(layers, {"2 + 2?": samples})
    assert result.candidates == ["4 (b)", "4 (c)", "4 (a)"]  # the majority answer, most likely first; not "5"
    assert [c.mean_logprob for c in result.final] == [-0.5, -1.0, -2.0]


def confident(text, entropy_spread):
    """A sample whose one token has the given top alternatives (flatter: higher entropy)."""
    top = {text: math.log(1 - entropy_spread), "other": math.log(entropy_spread)}
    return Completion(text, 1, [TokenLP(text, top[text], top)], "stop")


def test_inverse_entropy_vote_lets_confident_samples_outvote_unsure_ones():
    samples = [confident("5", 0.001), confident("4", 0.5), confident("4", 0.5)]
    layers = [[{"type": "generate", "samples": 3, "logprobs": 2}], [{"type": "vote", "method": "inverse_entropy",
                                                                     "extract": "number"}]]
    result, backend = run(layers, {"2 + 2?": samples})
    assert backend.calls[0].params.logprobs == 2
    assert result.candidates == ["5"]
    plain, _ = run([layers[0], [{"type": "vote", "extract": "number"}]], {"2 + 2?": samples})
    assert plain.candidates == ["4", "4"]


# --- unit_test ------------------------------------------------------------------------------------------------

ADD = {"right": "```python\ndef add(a, b):\n    return a + b\n```",
       "half": "```python\ndef add(a, b):\n    return 5\n```",
       "wrong": "```python\ndef add(a, b):\n    return a - b\n```"}
ADD_TESTS = ["assert add(2, 3) == 5", "assert add(-1, 1) == 0"]


def test_unit_test_executes_the_task_tests_and_sorts_by_pass_rate():
    first, rules = given(ADD["wrong"], ADD["half"], ADD["right"])
    result, backend = run([first, [{"type": "unit_test", "timeout_s": 2}]], rules, tests=ADD_TESTS)
    assert [(c.text, c.pass_rate) for c in result.final] == [(ADD["right"], 1.0), (ADD["half"], 0.5),
                                                             (ADD["wrong"], 0.0)]
    assert len(backend.calls) == 1  # the tests came from the task: nothing asked of a model
    best, _ = run([first, [{"type": "unit_test", "keep": "passing", "timeout_s": 2}]], rules, tests=ADD_TESTS)
    assert best.candidates == [ADD["right"]]
    # a right function followed by the model's own wrong self-test: only the definitions the tests call are run
    selftest = "```python\ndef add(a, b):\n    return a + b\n\nassert add(1, 1) == 3\nprint(add(2, 2))\n```"
    first, rules = given(selftest)
    result, _ = run([first, [{"type": "unit_test", "timeout_s": 2}]], rules, tests=ADD_TESTS)
    assert [c.pass_rate for c in result.final] == [1.0]


def test_unit_test_executes_tests_the_model_wrote():
    first, rules = given(ADD["half"], ADD["right"])
    written = "```python\nassert add(2, 3) == 5\nassert add(1, 1) == 2\nprint('not a test')\n```"
    result, backend = run([first, [{"type": "unit_test", "source": "generate", "num_tests": 2, "name": "ut",
                                    "timeout_s": 2}]], {WRITE_TESTS: written, **rules})
    assert [(c.text, c.pass_rate) for c in result.final] == [(ADD["right"], 1.0), (ADD["half"], 0.5)]
    (note,) = [n for n in notes(result, "ut") if "tests" in n]
    assert note["tests"] == ["assert add(2, 3) == 5", "assert add(1, 1) == 2"] and note["executed"] is True
    assert "Write 2 Python assert" in backend.made(WRITE_TESTS)[0].prompt


def test_unit_test_judges_prose_candidates_check_by_check():
    first, rules = given("Four. Thank you!", "Four.", "Five.")
    def check(prompt, params, index):
        response = prompt.split("Response: ")[1].split("\n")[0]
        test = prompt.split("this check: ")[1].split("\n")[0]
        ok = "Four" in response if test == "mentions four" else "Thank" in response
        return "Yes" if ok else "No"
    result, backend = run([first, [{"type": "unit_test"}]], {CHECK: check, **rules},
                          tests=["mentions four", "is polite"])
    assert [(c.text, c.pass_rate) for c in result.final] == [("Four. Thank you!", 1.0), ("Four.", 0.5), ("Five.", 0.0)]
    assert len(backend.made(CHECK)) == 6 and {c.params.max_tokens for c in backend.made(CHECK)} == {8}


def test_unit_test_without_usable_written_tests_keeps_the_candidates():
    first, rules = given("four", "five")
    result, _ = run([first, [{"type": "unit_test", "source": "generate", "name": "ut"}]],
                    {WRITE_TESTS: "Sorry, I cannot.", **rules})
    assert result.candidates == ["four", "five"] and notes(result, "ut")[0]["fallback"] == "no tests"


def test_unit_test_with_source_given_and_no_task_tests_is_a_clear_error():
    first, rules = given("four")
    with pytest.raises(InvalidRequestError, match="source=given but the task gave no tests"):
        run([first, [{"type": "unit_test", "source": "given", "name": "ut"}]], rules)


# --- generate and first_finish --------------------------------------------------------------------------------

def test_generate_asks_each_model_once_for_all_its_samples():
    models = {"m": {"model": "a"}, "n": {"model": "b"}}
    other = ScriptedBackend({"2 + 2?": ["x", "y"]}, model="other")
    backend = ScriptedBackend({"2 + 2?": ["p", "q"]})
    result = run_spec({"name": "g", "models": models, "layers": [[{"type": "generate", "models": ["m", "n"],
                                                                     "samples": 2, "system": "Be brief."}]]},
                      QUESTION, backends={"m": backend, "n": other})
    assert [(c.text, c.model) for c in result.final] == [("p", "m"), ("q", "m"), ("x", "n"), ("y", "n")]
    (mine,), (theirs,) = backend.calls, other.calls
    assert mine.params.n == theirs.params.n == 2 and mine.params.seed != theirs.params.seed
    assert mine.messages == [{"role": "system", "content": "Be brief."}, *QUESTION]


def test_first_finish_keeps_the_first_sample_to_finish():
    result, backend = run([[{"type": "first_finish", "samples": 3}]], {"2 + 2?": ["one two three", "four", "five six"]})
    assert result.candidates == ["four"] and result.final[0].finish_reason == "stop"
    (call,) = backend.calls
    assert call.first_finish and call.params.n == 3 and call.params.temperature == 0.7
