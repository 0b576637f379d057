import json

import pytest
import torch
from safetensors import safe_open

from model import DeepSeekV3

from .conftest import micro_model

pytestmark = pytest.mark.usefixtures("single_thread")

YARN = {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64,
        "beta_fast": 32, "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0}
PARITY_CONFIGS = {
    "group-limited+bias": dict(),
    "no-q-lora,one-group,2-shared,all-moe": dict(q_lora_rank=None, n_group=1, topk_group=1, n_shared_experts=2,
                                                 first_k_dense_replace=0, norm_topk_prob=False),
    "yarn": dict(rope_scaling=YARN, routed_scaling_factor=1.0),
    "16-experts,top-3-of-1-group,2-dense": dict(n_routed_experts=16, num_experts_per_tok=3, n_group=4,
                                                topk_group=1, first_k_dense_replace=2, num_hidden_layers=4),
}


def keys_of(path):
    with safe_open(str(path / "model.safetensors"), framework="pt") as f:
        return {k: f.get_slice(k).get_dtype() for k in f.keys()}


def test_save_pretrained_layout(tmp_path):
    model = micro_model(bias_std=0.05)
    model.save_pretrained(tmp_path, dtype=torch.bfloat16)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["model_type"] == "deepseek_v3" and cfg["architectures"] == ["DeepseekV3ForCausalLM"]
    assert cfg["num_nextn_predict_layers"] == 1 and cfg["torch_dtype"] == "bfloat16"
    gen = json.loads((tmp_path / "generation_config.json").read_text())
    assert gen["eos_token_id"] == 1 and gen["bos_token_id"] == 0 and gen["temperature"] == 0.6
    keys = keys_of(tmp_path)
    for k in ["model.embed_tokens.weight", "lm_head.weight", "model.norm.weight",
              "model.layers.0.mlp.gate_proj.weight", "model.layers.1.mlp.experts.7.down_proj.weight",
              "model.layers.1.mlp.shared_experts.up_proj.weight", "model.layers.1.mlp.gate.weight",
              "model.layers.2.self_attn.kv_a_proj_with_mqa.weight", "model.layers.2.self_attn.kv_b_proj.weight",
              # MTP under layer num_hidden_layers, block weights directly under it
              "model.layers.3.enorm.weight", "model.layers.3.hnorm.weight", "model.layers.3.eh_proj.weight",
              "model.layers.3.shared_head.norm.weight", "model.layers.3.shared_head.head.weight",
              "model.layers.3.embed_tokens.weight", "model.layers.3.self_attn.q_a_proj.weight",
              "model.layers.3.mlp.experts.0.gate_proj.weight"]:
        assert k in keys, k
    assert keys["model.layers.1.mlp.gate.e_score_correction_bias"] == "F32"
    assert keys["model.layers.1.mlp.gate.weight"] == "BF16"
    assert not any("rotary" in k or ".block." in k or k.startswith("mtp.") for k in keys)


def test_roundtrip_single_and_sharded(tmp_path):
    model = micro_model(bias_std=0.05, mtp_loss_weight=0.1, expert_capacity_factor=1.25)
    ids = torch.randint(0, 256, (2, 10))
    want = model(ids, ids)
    for sub, shard in [("single", 4 * 1024**3), ("sharded", 200_000)]:
        model.save_pretrained(tmp_path / sub, max_shard_bytes=shard)
        loaded = DeepSeekV3.from_pretrained(tmp_path / sub).eval()
        assert loaded.config == model.config
        sd, lsd = model.state_dict(), loaded.state_dict()
        assert sd.keys() == lsd.keys() and all(torch.equal(sd[k], lsd[k]) for k in sd)
        got = loaded(ids, ids)
        assert torch.equal(got.logits, want.logits) and torch.equal(got.loss, want.loss)
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    assert len(list((tmp_path / "sharded").glob("model-*-of-*.safetensors"))) > 1


def test_from_pretrained_names_the_mismatch(tmp_path):
    micro_model().save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"does not match its config.json: missing \d+ \[.mtp\.0\.block"):
        DeepSeekV3.from_pretrained(tmp_path, num_hidden_layers=4)


@pytest.mark.parametrize("name", list(PARITY_CONFIGS))
def test_logits_match_transformers(tmp_path, name):
    from transformers import AutoModelForCausalLM

    model = micro_model(seed=len(name), bias_std=0.05, **PARITY_CONFIGS[name])
    model.save_pretrained(tmp_path)
    hf, info = AutoModelForCausalLM.from_pretrained(tmp_path, output_loading_info=True, dtype=torch.float32)
    hf.eval()
    assert info["missing_keys"] == set() or not info["missing_keys"]
    L = model.config.num_hidden_layers
    assert all(k.startswith(f"model.layers.{L}.") for k in info["unexpected_keys"])   # MTP only
    seq = 100 if "rope_scaling" in PARITY_CONFIGS[name] else 33    # YaRN: past the original context
    ids = torch.randint(0, 256, (2, seq))
    with torch.no_grad():
        ours, theirs = model(ids).logits, hf(ids).logits
    assert (ours - theirs).abs().max().item() <= 1e-4


def test_greedy_generation_matches_transformers(tmp_path):
    from transformers import AutoModelForCausalLM

    model = micro_model(bias_std=0.05)
    model.save_pretrained(tmp_path)
    hf = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    prompt = [5, 17, 42, 99, 3]
    ours = model.generate([prompt], max_new_tokens=12, stop_token_ids=[])[0].tokens
    with torch.no_grad():
        theirs = hf.generate(torch.tensor([prompt]), max_new_tokens=12, min_new_tokens=12, do_sample=False,
                             eos_token_id=None, pad_token_id=0)[0, len(prompt):].tolist()
    assert ours == theirs


def test_loads_transformers_saved_checkpoint(tmp_path):
    """transformers 5 saves experts fused or per expert; either way we load it back."""
    from transformers import AutoModelForCausalLM

    model = micro_model(bias_std=0.05)
    model.save_pretrained(tmp_path / "ours")
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "ours", dtype=torch.float32)
    hf.save_pretrained(tmp_path / "hf")
    back = DeepSeekV3.from_pretrained(tmp_path / "hf", num_nextn_predict_layers=0).eval()
    ids = torch.randint(0, 256, (1, 12))
    assert torch.allclose(back(ids).logits, model(ids).logits, atol=1e-6)
