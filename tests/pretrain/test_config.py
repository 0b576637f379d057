"""Config validation (before any compute) and the schedules."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from stages.common.training.config import MTPWeightConfig, ScheduleConfig, TrainerConfig
from stages.common.training.schedule import learning_rate, mtp_weight
from stages.pretrain.config import PretrainConfig

ROOT = Path(__file__).resolve().parents[2]


def error_of(**section) -> str:
    with pytest.raises(ValidationError) as e:
        PretrainConfig(**section)
    return str(e.value)


def test_code_defaults_are_neutral_and_the_tiny_run_lives_in_tiny_yaml():
    cfg = PretrainConfig()
    assert cfg.build_model_config(vocab_size=1000).vocab_size == 1000
    assert cfg.train == TrainerConfig() and cfg.train.precision == "auto" and cfg.train.parallel.world_size == 1
    tiny = PretrainConfig(**yaml.safe_load((ROOT / "configs" / "tiny.yaml").read_text())["pretrain"])
    assert tiny.train.parallel.ep == 2 and tiny.train.bias_update_rate == 1e-2
    assert tiny.build_model_config().initializer_range == 0.02
    assert "TINY" not in (ROOT / "stages" / "pretrain" / "config.py").read_text()


@pytest.mark.parametrize(("section", "message"), [
    ({"model": {"preset": "tiny", "vocab_size": 999}}, "read from the tokenizer"),
    ({"model": {"preset": "nope"}}, "unknown model preset"),
    ({"model": {"preset": "tiny", "n_routed_experts": 15}}, "divisible by n_group"),
    ({"train": {"parallel": {"ep": 3}}}, "batch_size (16) must be divisible by workers x grad_accum (3 x 1"),
    ({"train": {"batch_size": 12, "parallel": {"ep": 3}}},
     "n_routed_experts (16) must be divisible by parallel.ep (3)"),
    ({"train": {"parallel": {"dp": 2, "ep": 2, "workers": 2}}}, "parallel.workers (2) must equal"),
    ({"train": {"batch_size": 10, "grad_accum": 4}}, "batch_size (10) must be divisible"),
    ({"train": {"seq_len": 4096}}, "seq_len (4096) exceeds the model's max_position_embeddings (2048)"),
    ({"train": {"precision": "fp16"}}, "precision"),
    ({"train": {"stepz": 3}}, "stepz"),
    ({"train": {"steps": 10, "schedule": {"warmup_steps": 10}}}, "warmup_steps (10) must be below steps"),
    ({"train": {"optimizer": {"betas": [0.9, 1.0]}}}, "betas"),
    ({"train": {"mtp_weight": {"start_at": 0.9, "switch_at": 0.5}}}, "start_at (0.9) is after switch_at"),
    ({"data": {"mix": {"web": 0}}}, "positive sum"),
])
def test_bad_configs_fail_with_a_clear_message(section, message):
    assert message in error_of(**section)


def test_train_section_keys_left_out_take_the_trainer_defaults():
    cfg = PretrainConfig(train={"steps": 40, "optimizer": {"lr": 1e-3}, "schedule": {"warmup_steps": 4}})
    neutral = TrainerConfig()
    assert (cfg.train.steps, cfg.train.optimizer.lr, cfg.train.schedule.warmup_steps) == (40, 1e-3, 4)
    assert cfg.train.batch_size == neutral.batch_size and cfg.train.seq_len == neutral.seq_len
    assert cfg.train.schedule.min_lr_ratio == neutral.schedule.min_lr_ratio


def test_micro_batch_follows_layout_and_accumulation():
    cfg = TrainerConfig(batch_size=16, grad_accum=2, parallel={"dp": 2, "ep": 2})
    assert cfg.micro_batch_size == 2
    assert cfg.tokens_per_step == 16 * cfg.seq_len


def test_cosine_and_wsd_schedules():
    cos = ScheduleConfig(kind="cosine", warmup_steps=10, min_lr_ratio=0.1)
    lrs = [learning_rate(s, 100, 1.0, cos) for s in range(1, 101)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)          # linear warmup
    assert lrs[-1] == pytest.approx(0.1)                                           # ends at the floor
    assert lrs[54] == pytest.approx(0.55, abs=1e-2)                               # half-way: midpoint
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:], strict=False))                          # monotone decay

    wsd = ScheduleConfig(kind="wsd", warmup_steps=10, min_lr_ratio=0.0, decay_fraction=0.2)
    lrs = [learning_rate(s, 100, 1.0, wsd) for s in range(1, 101)]
    assert lrs[10:80] == [1.0] * 70                                                # stable phase
    assert lrs[-1] == pytest.approx(0.0, abs=1e-12) and lrs[89] == pytest.approx(0.5, abs=1e-9)
    assert learning_rate(50, 100, 2.0, ScheduleConfig(kind="constant", warmup_steps=0)) == 2.0


def test_mtp_weight_switches_once():
    cfg = MTPWeightConfig(initial=0.3, final=0.1, switch_at=0.7)
    weights = [mtp_weight(s, 100, cfg) for s in range(1, 101)]
    assert weights[:70] == [0.3] * 70 and weights[70:] == [0.1] * 30
    assert not any(math.isnan(w) for w in weights)


def test_mtp_weight_schedule_starts_late_and_zero_means_off():
    late = MTPWeightConfig(initial=0.3, final=0.1, switch_at=0.9, start_at=0.6)
    weights = [mtp_weight(s, 100, late) for s in range(1, 101)]
    assert weights[:60] == [0.0] * 60 and weights[60:90] == [0.3] * 30 and weights[90:] == [0.1] * 10
    off = MTPWeightConfig(initial=0, final=0)
    assert {mtp_weight(s, 10, off) for s in range(1, 11)} == {0.0}
