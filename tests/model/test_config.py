import json

import pytest
from pydantic import ValidationError

from model import PRESETS, ModelConfig

pytestmark = pytest.mark.usefixtures("single_thread")


def test_presets_load_and_validate():
    for name in PRESETS:
        cfg = ModelConfig.load(name)
        assert cfg.num_hidden_layers >= 1
    tiny = ModelConfig.load("tiny")
    assert tiny.vocab_size == 4096 and tiny.first_k_dense_replace == 1
    assert tiny.num_nextn_predict_layers == 1 and tiny.max_position_embeddings >= 1024
    assert 128 <= tiny.hidden_size <= 256 and 8 <= tiny.n_routed_experts <= 16


def test_671b_preset_is_the_released_config():
    c = ModelConfig.load("deepseek-v3-671b")
    assert (c.hidden_size, c.num_hidden_layers, c.num_attention_heads) == (7168, 61, 128)
    assert (c.q_lora_rank, c.kv_lora_rank, c.qk_nope_head_dim, c.qk_rope_head_dim, c.v_head_dim) == (
        1536, 512, 128, 64, 128)
    assert (c.n_routed_experts, c.n_shared_experts, c.num_experts_per_tok) == (256, 1, 8)
    assert (c.moe_intermediate_size, c.intermediate_size, c.first_k_dense_replace) == (2048, 18432, 3)
    assert (c.n_group, c.topk_group, c.routed_scaling_factor, c.vocab_size) == (8, 4, 2.5, 129280)
    assert c.max_position_embeddings == 163840 and c.rms_norm_eps == 1e-6
    rs = c.rope_scaling
    assert (rs.type, rs.factor, rs.original_max_position_embeddings, rs.beta_fast, rs.beta_slow,
            rs.mscale, rs.mscale_all_dim) == ("yarn", 40, 4096, 32, 1, 1.0, 1.0)


def test_overrides_and_preset_key(tmp_path):
    assert ModelConfig.load("tiny", vocab_size=32000).vocab_size == 32000
    cfg = ModelConfig.model_validate({"preset": "small", "num_hidden_layers": 6})
    assert cfg.num_hidden_layers == 6 and cfg.hidden_size == PRESETS["small"]["hidden_size"]
    y = tmp_path / "m.yaml"
    y.write_text("preset: tiny\nvocab_size: 1000\nmtp_loss_weight: 0.1\n")
    cfg = ModelConfig.load(y)
    assert cfg.vocab_size == 1000 and cfg.mtp_loss_weight == 0.1 and cfg.hidden_size == 192
    y.write_text("hidden_size: 96\nnum_attention_heads: 2\n")
    assert ModelConfig.load(y).hidden_size == 96


@pytest.mark.parametrize("fields, message", [
    ({"n_routed_experts": 10, "n_group": 4}, "must be divisible by n_group"),
    ({"topk_group": 5, "n_group": 4}, "topk_group (5) must be <= n_group (4)"),
    ({"num_experts_per_tok": 9, "n_group": 4, "topk_group": 2}, "exceeds the experts reachable"),
    ({"n_routed_experts": 4, "n_group": 4}, "needs >= 2 experts"),
    ({"first_k_dense_replace": 9}, "first_k_dense_replace (9) must be <="),
    ({"qk_rope_head_dim": 7}, "must be even"),
    ({"eos_token_id": 5000}, "outside the vocabulary"),
    ({"hidden_size": 0}, "greater than 0"),
])
def test_validation_errors_name_the_problem(fields, message):
    with pytest.raises(ValidationError) as e:
        ModelConfig.load("tiny", **fields)
    assert message in str(e.value)


def test_unknown_keys_and_presets_are_errors(tmp_path):
    with pytest.raises(ValidationError, match="hiden_size"):
        ModelConfig.load("tiny", hiden_size=3)
    with pytest.raises(ValidationError, match="unknown model preset 'huge'"):
        ModelConfig.model_validate({"preset": "huge"})
    with pytest.raises(ValueError, match="neither a model preset"):
        ModelConfig.load("no-such-thing")


def test_hf_dict_roundtrip_and_released_config():
    c = ModelConfig.load("deepseek-v3-671b", mtp_loss_weight=0.1)
    d = c.to_hf_dict()
    assert d["model_type"] == "deepseek_v3" and d["num_key_value_heads"] == 128
    assert d["rope_scaling"]["rope_type"] == "yarn" and d["rope_scaling"]["type"] == "yarn"
    assert ModelConfig.from_hf_dict(json.loads(json.dumps(d))) == c
    # the released config.json, bookkeeping keys and all
    released = {**{k: v for k, v in d.items() if k in ModelConfig.model_fields and k not in (
        "mtp_loss_weight", "router_bias_update_rate", "seq_aux_loss_alpha", "expert_capacity_factor",
        "activation_checkpointing", "initializer_range")},
        "architectures": ["DeepseekV3ForCausalLM"], "auto_map": {}, "aux_loss_alpha": 0.001,
        "ep_size": 1, "initializer_range": 0.02, "moe_layer_freq": 1, "pretraining_tp": 1,
        "quantization_config": {"quant_method": "fp8"}, "scoring_func": "sigmoid", "seq_aux": True,
        "topk_method": "noaux_tc", "torch_dtype": "bfloat16", "transformers_version": "4.33.1",
        "rope_scaling": {"beta_fast": 32, "beta_slow": 1, "factor": 40, "mscale": 1.0,
                         "mscale_all_dim": 1.0, "original_max_position_embeddings": 4096, "type": "yarn"}}
    r = ModelConfig.from_hf_dict(released)
    assert r.rope_scaling == c.rope_scaling and r.n_routed_experts == 256
    with pytest.raises(ValueError, match="scoring_func='softmax'"):
        ModelConfig.from_hf_dict({**released, "scoring_func": "softmax"})


def test_config_module_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys; from model import ModelConfig; ModelConfig.load('tiny'); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
