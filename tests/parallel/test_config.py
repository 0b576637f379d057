"""The parallel section is validated before any compute, with messages that name the fix."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from model.parallel.layout import ParallelLayout, split_layers, stage_ranks
from stages.common.training.config import TrainerConfig
from tests.pretrain.helpers import micro_config


def train(**parallel) -> TrainerConfig:
    extra = parallel.pop("train", {})
    return TrainerConfig.model_validate({"steps": 10, "batch_size": 8, "seq_len": 64, "schedule": {"warmup_steps": 1},
                                         "parallel": parallel, **extra})


def error_of(**parallel) -> str:
    with pytest.raises(ValidationError) as e:
        train(**parallel)
    return str(e.value)


def test_defaults_keep_the_dp_ep_path():
    cfg = train(dp=2)
    assert cfg.parallel.pp == 1 and cfg.parallel.zero == 0 and cfg.num_microbatches == 1
    assert cfg.micro_batch_size == 4 and cfg.parallel.world_size == 2 and cfg.checkpointing == "none"


def test_pipeline_batch_arithmetic():
    cfg = train(pp=2, microbatches=4)
    assert cfg.parallel.world_size == 2 and cfg.parallel.data_parallel_size == 1
    assert cfg.micro_batch_size == 2   # the pp ranks share the data: 8 / (1 x 4)


@pytest.mark.parametrize("parallel, message", [
    ({"pp": 2, "workers": 2, "dp": 2}, "parallel.workers (2) must equal parallel.pp x parallel.dp x parallel.ep"),
    ({"pp": 2, "microbatches": 1}, "schedule 1f1b with pp 2 needs at least 2 micro-batches"),
    ({"pp": 2, "schedule": "dualpipev", "microbatches": 2}, "dualpipev with pp 2 runs 4 stages and needs at least 4"),
    ({"pp": 4, "schedule": "interleaved", "microbatches": 9, "train": {"batch_size": 18}},
     "multiple of the rounds"),
    ({"pp": 2, "microbatches": 3}, "batch_size (8) must be divisible by data-parallel ranks x micro-batches"),
    ({"pp": 2, "microbatches": 2, "train": {"grad_accum": 4}}, "grad_accum (4) and parallel.microbatches (2)"),
    ({"activation_checkpointing": "full", "train": {"activation_checkpointing": "selective"}}, "disagree"),
    ({"pp": 2, "microbatches": 2, "zero": 3}, "zero: 3 (FSDP2 fully_shard) works without pipelining only"),
    ({"zero": 2}, "parallel.zero"),
    ({"schedule": "gpipe"}, "parallel.schedule"),
])
def test_bad_layouts_are_explained(parallel, message):
    assert message in error_of(**parallel)


def test_zero3_without_pipelining_is_accepted():
    assert train(dp=2, zero=3).parallel.zero == 3


def test_model_checks():
    model = micro_config(num_hidden_layers=3)   # 3 layers + 1 MTP = 4 units, 8 experts
    assert train(pp=2, schedule="dualpipev", microbatches=4).check_against(model) == []
    problems = " ".join(train(pp=4, schedule="dualpipev", microbatches=8).check_against(model))
    assert "cannot fill 8 pipeline stages" in problems
    assert "divisible by parallel.ep (3)" in " ".join(train(ep=3, train={"batch_size": 9}).check_against(model))


def test_split_rule():
    assert split_layers(3, 1, 2) == [[0, 1], [2, 3]]
    assert split_layers(4, 1, 4) == [[0, 1], [2], [3], [4]]   # earlier stages take the remainder
    v3 = split_layers(61, 1, 32)                                # DeepSeek-V3, 16 ranks x 2 stages
    assert [len(s) for s in v3] == [2] * 30 + [1] * 2 and v3[-1] == [61]
    assert stage_ranks(2, "dualpipev") == [0, 1, 1, 0] and stage_ranks(2, "interleaved") == [0, 1, 0, 1]
    with pytest.raises(ValueError, match="MTP module"):
        split_layers(2, 2, 3)


def test_layout_coordinates():
    lay = ParallelLayout(dp=2, ep=2, pp=2)
    assert lay.world_size == 8 and lay.coords3(5) == (1, 0, 1) and lay.coords(5) == (0, 1)
    assert lay.data_rank(5) == lay.data_rank(1) == 1   # both stages of a pipeline read the same slice
    assert ParallelLayout(2, 1).coords(1) == (1, 0)   # positional (dp, ep) still works
