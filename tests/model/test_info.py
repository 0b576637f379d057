import json
import subprocess
import sys

import pytest

from model import ModelConfig
from model.info import model_info

from .conftest import micro_config, micro_model

pytestmark = pytest.mark.usefixtures("single_thread")


def test_671b_published_figures():
    info = model_info(ModelConfig.load("deepseek-v3-671b"))
    assert info.total_params / 1e9 == pytest.approx(671.0, abs=0.5)            # "671B total"
    assert info.activated_params / 1e9 == pytest.approx(37.5, abs=0.5)          # "37B activated"
    assert info.activated_params_no_embedding / 1e9 == pytest.approx(36.6, abs=0.1)
    assert info.mtp_params / 1e9 == pytest.approx(11.6, abs=0.2)                # unique MTP weights
    assert info.checkpoint_params / 1e9 == pytest.approx(685, abs=1)            # HF checkpoint: 685B
    assert info.attention_params_per_layer / 1e6 == pytest.approx(187, abs=1)
    assert info.params_per_routed_expert / 1e6 == pytest.approx(44.0, abs=0.1)
    # MLA caches 512 + 64 numbers per token and layer; MHA of the same shape 128·(192 + 128)
    assert info.kv_cache_bytes_per_token == 61 * 576 * 2
    assert info.mha_kv_cache_bytes_per_token == 61 * 128 * 320 * 2
    assert info.kv_cache_bytes_per_token / info.mha_kv_cache_bytes_per_token == pytest.approx(0.0141, abs=1e-4)


def test_counts_match_the_instantiated_model():
    cfg = micro_config()
    info = model_info(cfg)
    model = micro_model()
    mtp = sum(p.numel() for p in model.mtp.parameters())
    assert info.total_params == model.num_parameters() - mtp and info.mtp_params == mtp
    per_expert = 3 * cfg.hidden_size * cfg.moe_intermediate_size
    routed = 2 * cfg.n_routed_experts * per_expert                         # layers 1 and 2
    assert info.activated_params == info.total_params - routed + 2 * cfg.num_experts_per_tok * per_expert
    assert info.kv_cache_bytes_per_token == 3 * (32 + 8) * 2


def test_cli_entry_point():
    out = subprocess.run([sys.executable, "-m", "model", "info", "tiny"], capture_output=True, text=True)
    assert out.returncode == 0 and "activated per token" in out.stdout and "KV cache per token" in out.stdout


def test_cli_json_and_errors(tmp_path, capsys):
    from model.__main__ import main

    y = tmp_path / "m.yaml"
    y.write_text("preset: tiny\nvocab_size: 1000\n")
    assert main(["info", str(y), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["embedding_params"] == 1000 * 192 and data["kv_cache_bytes_per_token"] == 4 * 80 * 2
    assert main(["info", "tiny-ish"]) == 2
    assert "neither a model preset" in capsys.readouterr().err
    y.write_text("preset: tiny\nn_group: 3\n")
    assert main(["info", str(y)]) == 2
    assert "must be divisible by n_group (3)" in capsys.readouterr().err


def test_model_package_imports_nothing_from_pipeline_or_stages():
    code = ("import sys, model, model.transformer, model.hf_checkpoint, model.info, model.generation; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('pipeline', 'stages')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
