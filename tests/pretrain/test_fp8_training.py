"""FP8 (DeepSeek-V3 recipe) against BF16 on the tiny model: from the same init on the same real
batches, the FP8 loss after the same number of steps is within 2% (relative) of BF16's."""

from __future__ import annotations

import torch

from model import DeepSeekV3, ModelConfig
from model.fp8 import Float8Linear, prepare_model
from model.parallel import ParallelGroups
from stages.common.training.config import ScheduleConfig
from stages.common.training.schedule import learning_rate
from stages.common.training.step import TrainStep, build_optimizer
from stages.pretrain.data import ShardBatchSource
from tokenizer import Tokenizer

STEPS, BATCH, SEQ = 20, 4, 64


def loss_curve(tokenized, precision: str) -> tuple[list[float], DeepSeekV3]:
    vocab = Tokenizer.load(tokenized / "tokenizer").vocab_size
    torch.manual_seed(0)
    model = DeepSeekV3(ModelConfig.load("tiny", vocab_size=vocab)).train()
    prepare_model(model, precision)
    step = TrainStep(model, build_optimizer(model, 3e-3, (0.9, 0.95), 0.1), ParallelGroups.single(),
                     precision=precision)
    data = ShardBatchSource(tokenized / "shards", SEQ, BATCH, seed=0, rank=0, world_size=1)
    schedule = ScheduleConfig(warmup_steps=5)
    return [step([data.next_batch()], learning_rate(s, STEPS, 3e-3, schedule), 0.3).lm_loss
            for s in range(1, STEPS + 1)], model


def test_fp8_loss_curve_tracks_bf16(tokenized):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        bf16, _ = loss_curve(tokenized, "bf16")
        fp8, model = loss_curve(tokenized, "fp8")
    finally:
        torch.set_num_threads(threads)
    assert sum(isinstance(m, Float8Linear) for m in model.modules()) > 0      # FP8 really ran
    assert bf16[-1] < bf16[0] - 0.5                                             # both learnt something
    last_bf16, last_fp8 = sum(bf16[-3:]) / 3, sum(fp8[-3:]) / 3
    assert abs(last_fp8 - last_bf16) / last_bf16 < 0.02
    assert fp8 != bf16                                                          # and they are not the same run
    # along the way too (median: at 256 tokens per batch both curves have a few loss spikes)
    rel = sorted(abs(a - b) / b for a, b in zip(fp8, bf16, strict=True))
    assert rel[len(rel) // 2] < 0.01

