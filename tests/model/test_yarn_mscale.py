"""YaRN magnitude scaling against DeepSeek's reference (inference/model.py) and transformers.

DeepSeek's reference: softmax_scale = d_qk^-0.5 · mscale(factor, mscale)², cos/sin unscaled.
transformers (and Whale): cos/sin × mscale(f, mscale)/mscale(f, mscale_all_dim) when both are
set, else × mscale(f, 1); softmax × mscale(f, mscale_all_dim)² only when mscale_all_dim is set.
The effective multiplier of a score's rotary part is cos_factor² · softmax_scale, of its
non-rotary part softmax_scale."""

import math

import pytest
from transformers import DeepseekV3Config
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from model import ModelConfig
from model.rope import yarn_inv_freq


def _mscale(factor: float, m: float = 1.0) -> float:
    return 0.1 * m * math.log(factor) + 1.0


def _score_multipliers(cfg: ModelConfig) -> tuple[float, float]:
    """(rotary part, non-rotary part) multipliers of q·k in Whale."""
    _, cos_factor = yarn_inv_freq(cfg.qk_rope_head_dim, cfg.rope_theta, cfg.rope_scaling)
    return cos_factor ** 2 * cfg.softmax_scale, cfg.softmax_scale


def _deepseek_reference(cfg: ModelConfig) -> float:
    """inference/model.py MLA.__init__: one multiplier for every dim."""
    return cfg.qk_head_dim ** -0.5 * _mscale(cfg.rope_scaling.factor, cfg.rope_scaling.mscale) ** 2


def _with_scaling(**rs) -> ModelConfig:
    base = ModelConfig.load("deepseek-v3-671b")
    return base.model_copy(update={"rope_scaling": base.rope_scaling.model_copy(update=rs)})


def test_v3_config_matches_deepseek_reference_on_every_dim():
    cfg = ModelConfig.load("deepseek-v3-671b")
    rotary, other = _score_multipliers(cfg)
    assert rotary == pytest.approx(_deepseek_reference(cfg)) and other == pytest.approx(_deepseek_reference(cfg))


@pytest.mark.parametrize("mscale", [1.0, 0.707])
def test_unset_mscale_all_dim_follows_transformers_and_scales_only_rotary_dims(mscale):
    cfg = _with_scaling(mscale=mscale, mscale_all_dim=0.0)
    hf = DeepseekV3Config(**cfg.to_hf_dict())
    _, hf_cos_factor = ROPE_INIT_FUNCTIONS["yarn"](hf, "cpu")
    rotary, other = _score_multipliers(cfg)
    d = cfg.qk_head_dim ** -0.5
    # transformers: cos/sin × mscale(40, 1) whatever `mscale` says; softmax unscaled
    assert rotary == pytest.approx(d * hf_cos_factor ** 2) == pytest.approx(d * _mscale(40) ** 2)
    assert other == pytest.approx(d)
    # ... which is not DeepSeek's reference (every dim × mscale(40, mscale)²)
    assert other != pytest.approx(_deepseek_reference(cfg))


def test_setting_mscale_all_dim_to_mscale_reproduces_the_reference():
    cfg = _with_scaling(mscale=0.707, mscale_all_dim=0.707)
    rotary, other = _score_multipliers(cfg)
    assert rotary == pytest.approx(_deepseek_reference(cfg)) and other == pytest.approx(_deepseek_reference(cfg))
