"""Architecture specs: validation errors name the file, the path and what was expected; examples validate."""
from __future__ import annotations

from pathlib import Path

import pytest

from lamina.errors import SpecError
from lamina.spec import load_spec, parse_spec

EXAMPLES = sorted((Path(__file__).parent.parent / "examples" / "architectures").glob("*.yaml"))


def spec(*layers, **extra):
    return {"name": "t", "layers": list(layers), **extra}


def error(data, source="arch.yaml") -> str:
    with pytest.raises(SpecError) as info:
        parse_spec(data, source)
    return str(info.value)


def test_error_names_file_path_and_expectation():
    msg = error(spec([{"type": "generate"}], [{"type": "generate"}], [{"type": "rank", "top_k": 0}]))
    assert msg.startswith("arch.yaml:")
    assert "layers[2][0].top_k" in msg and "greater than or equal to 1" in msg and "got 0" in msg


def test_unknown_component_type_lists_known_ones():
    msg = error(spec([{"type": "blend"}]))
    assert "layers[0][0]" in msg and "'blend'" in msg and "'generate'" in msg and "'unit_test'" in msg


def test_unknown_key_is_rejected():
    assert "layers[0][0].sample" in error(spec([{"type": "generate", "sample": 3}]))


def test_unknown_model_alias():
    msg = error(spec([{"type": "generate", "models": ["a", "ghost"]}], models={"a": {"model": "default"}}))
    assert "layers[0][0].models" in msg and "'ghost'" in msg and "['a']" in msg


def test_bad_backend_and_budget_fields():
    assert "models.x.backend" in error(spec([{"type": "generate"}], models={"x": {"backend": "grpc"}}))
    assert "budget.max_calls" in error(spec([{"type": "generate"}], budget={"max_calls": -1}))
    assert "layers" in error({"name": "t", "layers": []})
    assert "name" in error({"layers": [[{"type": "generate"}]]})


def test_single_component_layer_shorthand_and_defaults():
    parsed = parse_spec(spec({"type": "generate", "samples": 3}, [{"type": "vote"}]))
    assert [[c.type for c in layer] for layer in parsed.layers] == [["generate"], ["vote"]]
    assert parsed.layers[0][0].samples == 3
    assert parsed.models["default"].backend == "local" and parsed.models["default"].model == "default"
    assert parsed.resolve == "first" and parsed.budget.on_exceed == "error"


def test_file_errors(tmp_path):
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("name: x\nlayers:\n  - [ {type: generate\n")
    with pytest.raises(SpecError, match=r"bad\.yaml: invalid YAML at line \d+"):
        load_spec(bad_yaml)
    bad_json = tmp_path / "bad.json"
    bad_json.write_text('{"name": "x", "layers": [}')
    with pytest.raises(SpecError, match=r"bad\.json: invalid JSON at line 1"):
        load_spec(bad_json)
    with pytest.raises(SpecError, match="missing.yaml: cannot read"):
        load_spec(tmp_path / "missing.yaml")
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("name: x\nlayers:\n  - - {type: vote, method: plurality}\n")
    with pytest.raises(SpecError, match=r"(?s)wrong\.yaml: .*layers\[0\]\[0\]\.method: Input should be .majority."):
        load_spec(wrong)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_validate(path):
    parsed = load_spec(path)
    assert parsed.name == path.stem
    assert all(m.backend == "local" for m in parsed.models.values())


def test_component_types_come_from_the_technique_registry():
    from lamina.techniques import TECHNIQUES

    for kind, technique in TECHNIQUES.items():
        (component,) = parse_spec(spec([{"type": kind}])).layers[0]
        assert type(component) is technique.spec_class and component.type == kind
