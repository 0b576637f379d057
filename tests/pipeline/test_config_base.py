"""``base:`` includes, and the big config resolving without anything borrowed from the tiny run."""

from __future__ import annotations

import pytest
import yaml

from pipeline.config import ConfigError, load_config
from pipeline.tracking import flatten
from tests.conftest import ROOT
from tests.pipeline.toy_stages import STAGES


def write(path, text):
    path.write_text(text)
    return path


def test_base_include_merges_mappings_at_any_depth_and_replaces_values(tmp_path):
    write(tmp_path / "base.yaml", "name: base\nseed: 3\na: {value: 5, log_dir: /tmp/base-log}\n"
                                  "b: {value: 7}\nray: {num_cpus: 2}\n")
    child = write(tmp_path / "child.yaml", "base: base.yaml\nname: child\na: {value: 6}\n")
    cfg = load_config(child, STAGES, overrides=["b.fail=true"])
    assert cfg.name == "child" and cfg.globals.seed == 3 and cfg.globals.ray.num_cpus == 2
    assert (cfg.sections["a"].value, cfg.sections["a"].log_dir) == (6, "/tmp/base-log"), "merged, not replaced"
    assert (cfg.sections["b"].value, cfg.sections["b"].fail) == (7, True)
    assert "base" not in cfg.raw


def test_base_chain_cycle_and_missing_base_are_clear_errors(tmp_path):
    write(tmp_path / "one.yaml", "base: two.yaml\nname: one\n")
    write(tmp_path / "two.yaml", "base: one.yaml\nname: two\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "one.yaml", STAGES)
    write(tmp_path / "orphan.yaml", "base: nowhere.yaml\n")
    with pytest.raises(ConfigError, match=r"nowhere.yaml \(the base of .*orphan.yaml\) does not exist"):
        load_config(tmp_path / "orphan.yaml", STAGES)
    write(tmp_path / "bad.yaml", "base: [a, b]\n")
    with pytest.raises(ConfigError, match="must name one YAML file"):
        load_config(tmp_path / "bad.yaml", STAGES)
    # a typo in a based config still names the key and the closest valid one
    write(tmp_path / "typo.yaml", "base: two.yaml\nname: t\na: {valeu: 1}\n")
    write(tmp_path / "two.yaml", "name: two\n")
    with pytest.raises(ConfigError, match="did you mean 'a.value'"):
        load_config(tmp_path / "typo.yaml", STAGES)


def test_deepseek_config_resolves_without_any_tiny_value():
    """Every pretrain knob configs/tiny.yaml chooses is either set by the 671B config itself or
    resolves to something else: nothing of the tiny run leaks into the big one through stage defaults.
    (Only the pretrain section is checked: the other sections of the 671B config are not meaningful.)"""
    from pipeline.registry import default_stages

    tiny = flatten(yaml.safe_load((ROOT / "configs" / "tiny.yaml").read_text())["pretrain"])
    big_path = ROOT / "configs" / "deepseek-v3-671b.yaml"
    big_raw = flatten(yaml.safe_load(big_path.read_text())["pretrain"])
    resolved = flatten(load_config(big_path, default_stages()).sections["pretrain"].model_dump(mode="json"))
    leaked = {k: v for k, v in tiny.items() if k not in big_raw and resolved.get(k) == v}
    assert leaked == {}, f"tiny values in the resolved 671B config: {leaked}"
    # and the values it sets are its own
    assert resolved["model.preset"] == "deepseek-v3-671b" and resolved["train.precision"] == "fp8"
