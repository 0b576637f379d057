"""Config validation: mistakes fail before any compute, with messages that say what to fix."""

from __future__ import annotations

import pytest

from pipeline.config import ConfigError, load_config, parse_config
from tests.pipeline.toy_stages import STAGES

YAML = """\
name: demo
seed: 3
output_root: {root}
a:
  value: 2
b:
  valeu: 5
"""


def test_typo_names_key_file_line_and_closest_valid_key(tmp_path):
    path = tmp_path / "demo.yaml"
    path.write_text(YAML.format(root=tmp_path))
    with pytest.raises(ConfigError) as e:
        load_config(path, STAGES)
    msg = str(e.value)
    assert str(path) in msg
    assert "b.valeu" in msg and "line 7" in msg
    assert "did you mean 'b.value'" in msg


def test_typo_in_global_section(tmp_path):
    with pytest.raises(ConfigError, match=r"did you mean 'output_root'"):
        parse_config({"name": "x", "output_rot": "o"}, STAGES)
    with pytest.raises(ConfigError, match=r"did you mean 'tracking.uri'"):
        parse_config({"name": "x", "tracking": {"url": "http://x"}}, STAGES)


def test_set_overrides_are_type_checked(tmp_path):
    cfg = parse_config({"name": "x"}, STAGES, overrides=["a.value=7", "seed=11", "ray.num_cpus=2"])
    assert cfg["a"].value == 7 and cfg.globals.seed == 11 and cfg.globals.ray.num_cpus == 2
    with pytest.raises(ConfigError, match=r"a.value \(from --set a.value=seven\)"):
        parse_config({"name": "x"}, STAGES, overrides=["a.value=seven"])
    with pytest.raises(ConfigError, match="expected key.path=value"):
        parse_config({"name": "x"}, STAGES, overrides=["a.value"])
    with pytest.raises(ConfigError, match="did you mean 'a.value'"):
        parse_config({"name": "x"}, STAGES, overrides=["a.vlue=3"])


def test_resolved_config_round_trips(tmp_path):
    cfg = parse_config({"name": "x", "a": {"value": 4}}, STAGES)
    again = parse_config(__import__("yaml").safe_load(cfg.to_yaml()), STAGES)
    assert again.to_dict() == cfg.to_dict()


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml", STAGES)
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad, STAGES)


def test_name_must_be_a_valid_experiment_name():
    with pytest.raises(ConfigError, match="name"):
        parse_config({"name": "has spaces"}, STAGES)
