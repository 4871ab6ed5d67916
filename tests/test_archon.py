"""Archon configs -> Lamina specs: both config forms, model_type -> backend mapping, and the CLI."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from lamina.archon import convert_archon
from lamina.cli import main
from lamina.errors import SpecError
from lamina.spec import load_spec, parse_spec

EXAMPLE = Path(__file__).parent.parent / "examples" / "architectures" / "archon_example.json"


def test_layers_form_maps_components_and_keys():
    config = {"name": "moa", "layers": [
        [{"type": "generator", "model": "Qwen/Qwen2-72B-Instruct", "model_type": "Together_API",
          "temperature": 0.7, "max_tokens": 512, "samples": 5},
         {"type": "generator", "model": "gpt-4o", "model_type": "OpenAI_API", "samples": 2}],
        [{"type": "critic", "model": "gpt-4o", "model_type": "OpenAI_API"}],
        [{"type": "ranker", "model": "gpt-4o", "model_type": "OpenAI_API", "top_k": 3, "use_critiques": True}],
        [{"type": "fuser", "model": "default", "model_type": "vLLM", "first_k": 2, "samples": 1,
          "max_context_length": 1024}],
    ]}
    spec = convert_archon(config).spec
    gen_a, gen_b = spec["layers"][0]
    assert gen_a == {"type": "generate", "model": "qwen2-72b-instruct", "temperature": 0.7, "max_tokens": 512,
                     "samples": 5}
    assert spec["models"]["qwen2-72b-instruct"] == {"backend": "openai", "model": "Qwen/Qwen2-72B-Instruct",
                                                    "base_url": "https://api.together.xyz/v1",
                                                    "api_key_env": "TOGETHER_API_KEY"}
    assert spec["models"][gen_b["model"]]["api_key_env"] == "OPENAI_API_KEY"
    assert spec["layers"][1] == [{"type": "critique", "model": gen_b["model"]}]
    assert spec["layers"][2][0]["top_k"] == 3 and spec["layers"][2][0]["use_critiques"] is True
    fuse = spec["layers"][3][0]
    assert fuse["type"] == "fuse" and fuse["top_k"] == 2 and fuse["max_tokens"] == 1024
    assert spec["models"][fuse["model"]] == {"backend": "local", "model": "default"}
    parsed = parse_spec(spec)
    assert len(parsed.models) == 3  # gpt-4o is one alias, used by three components


def test_older_models_form_and_unit_tests():
    config = {"name": "old", "models": [{"model": "default", "model_type": "HuggingFace", "samples": 4}],
              "top_k_generations": 2, "fuser": {"model": "m", "model_type": "tgi"}}
    spec = convert_archon(config).spec
    assert [[c["type"] for c in layer] for layer in spec["layers"]] == [["generate"], ["rank"], ["fuse"]]
    assert spec["layers"][1][0]["top_k"] == 2
    tgi = spec["models"][spec["layers"][2][0]["model"]]
    assert tgi["backend"] == "openai" and tgi["base_url"].startswith("http://127.0.0.1") and "api_key_env" not in tgi

    tests_form = {"layers": [[{"type": "generator", "model": "default", "model_type": "vLLM", "samples": 3}],
                             [{"type": "unit_test_generator", "model": "default", "model_type": "vLLM",
                               "unit_test_cap": 4}],
                             [{"type": "unit_test_evaluator", "model": "default", "model_type": "vLLM"}]]}
    conversion = convert_archon(tests_form, "tests.json")
    assert conversion.spec["layers"][-1] == [{"type": "unit_test", "model": "default", "num_tests": 4}]
    assert len(conversion.spec["layers"]) == 2 and conversion.notes


def test_conversion_errors_name_the_place():
    with pytest.raises(SpecError, match=r"c\.json: layers\[0\]\[0\]\.model_type: unknown Archon model type 'Bard'"):
        convert_archon({"layers": [[{"type": "generator", "model": "x", "model_type": "Bard"}]]}, "c.json")
    with pytest.raises(SpecError, match=r"layers\[1\]\[0\]\.type: unknown Archon component 'mixer'"):
        convert_archon({"layers": [[{"model": "x"}], [{"type": "mixer", "model": "x"}]]}, "c.json")
    with pytest.raises(SpecError, match="expected Archon 'layers'"):
        convert_archon({"name": "empty"}, "c.json")


def test_cli_import_archon_writes_a_loadable_spec(tmp_path, capsys):
    out = tmp_path / "spec.yaml"
    assert main(["import-archon", str(EXAMPLE), "-o", str(out)]) == 0
    assert "4 components" in capsys.readouterr().out
    parsed = load_spec(out)
    assert parsed.name == json.loads(EXAMPLE.read_text())["name"]
    assert [[c.type for c in layer] for layer in parsed.layers] == [["generate"], ["critique"], ["rank"], ["fuse"]]
    assert yaml.safe_load(out.read_text())["models"]["default"] == {"backend": "local", "model": "default"}


def test_cli_import_archon_reports_bad_json(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    assert main(["import-archon", str(bad)]) == 2
    assert "bad.json: invalid JSON" in capsys.readouterr().err
