"""The whole stage on tiny inputs: every suite, no tracking server (the candidate is the distill
output folder), and the config checks that run before any compute."""

from __future__ import annotations

import json
import time

import pytest
from pydantic import ValidationError

from stages.eval.config import EvalConfig
from stages.eval.run import run
from tests.eval.conftest import stage_context

TASK_YAML = """\
task: whale_tiny_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: label
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""


@pytest.fixture
def mc_task(tmp_path):
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    rows = [{"question": f"What is {a} + {b}?", "choices": [str(a + b), str(a + b + 1), str(a * b + 7)], "label": 0}
            for a, b in [(1, 2), (3, 4), (5, 1), (2, 2)]]
    (tasks / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tasks / "tiny_mc.yaml").write_text(TASK_YAML.format(data=tasks / "data.jsonl"))
    return tasks


def test_every_suite_on_tiny_inputs(tmp_path, tokenizer_out, distill_out, mc_task):
    cfg = EvalConfig.model_validate({
        "language_modelling": {"max_bytes_per_source": 8000},
        "reasoning": {"max_problems": 8, "sampling": {"samples": 2, "max_new_tokens": 32}, "pass_at": [1, 2]},
        "humaneval": {"max_problems": 3, "samples": 2, "pass_at": [1, 2], "sampling": {"max_new_tokens": 32}},
        "harness": {"tasks": ["whale_tiny_mc", "no_such_task"], "include_path": str(mc_task),
                    "include_defaults": False, "offline": "on"},
        # the default rules ask for a clear reasoning gain over the base: a random model has none.
        # allow_regression: a failed gate is recorded and the stage returns (it would raise otherwise)
        "allow_regression": True,
        "gate": {"rules": [{"metric": "lm/web/bpb", "floor": 50.0}, {"metric": "reasoning/format", "floor": 0.0},
                           {"metric": "lm/web/bpb", "below_unigram": True, "required": False}]},
    })
    ctx = stage_context(tmp_path, tokenizer_out, distill_out)
    t0 = time.perf_counter()
    summary = run(cfg, ctx)
    wall = time.perf_counter() - t0
    print(f"stage wall time {wall:.1f}s")
    # no champion, no tracking: the floors decide, nothing can move
    assert summary["champion"] == "none" and summary["base"] == "none"
    # a random model is worse than the unigram model of the training tokens: refused, and said why
    assert summary["gate"] == "fail" and "NOT below the unigram baseline" in summary["gate_reason"]
    assert summary["promoted"] == "no (gate failed)"
    for key in ("lm/web/bpb", "lm/code/bpb", "reasoning/pass_at_1", "reasoning/pass_at_2", "reasoning/format",
                "reasoning/greedy_pass_at_1", "reasoning/greedy_pass_at_1_ci_high", "reasoning/pass_at_2_ci_low",
                "reasoning/reasoning_tokens", "humaneval/pass_at_1", "humaneval/pass_at_2",
                "lm_eval/whale_tiny_mc/acc"):
        assert f"candidate/{key}" in summary, key
    assert 0 <= summary["candidate/lm_eval/whale_tiny_mc/acc"] <= 1
    assert summary["candidate/reasoning/samples"] == 24 and summary["candidate/humaneval/samples"] == 6
    # the unknown task is skipped with its reason, and has no metric
    assert "no_such_task" in summary["lm_eval_skipped/no_such_task"] or summary["lm_eval_skipped/no_such_task"]
    assert not any(k.startswith("candidate/lm_eval/no_such_task") for k in summary)
    out = ctx.out
    assert (out / "comparison.md").read_text().count("\n") > 5
    gate = json.loads((out / "gate.json").read_text())
    assert gate["verdict"] == "fail" and gate["champion"] is None
    assert {c["kind"] for c in gate["checks"]} == {"floor", "unigram"}
    assert (out / "samples" / "candidate-reasoning.jsonl").is_file()


def test_config_errors_are_caught_before_compute():
    with pytest.raises(ValidationError, match="needs the language_modelling suite, which is disabled"):
        EvalConfig.model_validate({"language_modelling": {"enabled": False}})
    with pytest.raises(ValidationError, match="belongs to no suite"):
        EvalConfig.model_validate({"gate": {"rules": [{"metric": "accuracy", "floor": 0.5}]}})
    with pytest.raises(ValidationError, match="has no condition"):
        EvalConfig.model_validate({"gate": {"rules": [{"metric": "lm/web/bpb"}]}})
    with pytest.raises(ValidationError, match=r"every k must lie in \[1, sampling.samples=4\]"):
        EvalConfig.model_validate({"reasoning": {"sampling": {"samples": 4}, "pass_at": [1, 8]}})
    with pytest.raises(ValidationError, match="needs harness.base_url"):
        EvalConfig.model_validate({"harness": {"backend": "local-completions"}})
    with pytest.raises(ValidationError, match="expected models:/NAME@ALIAS"):
        EvalConfig.model_validate({"candidate": "models:/tiny"})
    with pytest.raises(ValidationError, match="unknown|extra"):
        EvalConfig.model_validate({"reasoning": {"temprature": 0.6}})


def test_missing_heldout_problems_fail_with_the_path(tmp_path, tokenizer_out, distill_out):
    cfg = EvalConfig.model_validate({"reasoning": {"problems_file": "nope.jsonl"}, "humaneval": {"enabled": False},
                                     "harness": {"enabled": False},
                                     "gate": {"rules": [{"metric": "reasoning/greedy_pass_at_1", "floor": 0.0}]}})
    with pytest.raises(FileNotFoundError, match="nope.jsonl does not exist: the distill stage writes"):
        run(cfg, stage_context(tmp_path, tokenizer_out, distill_out))


def test_hf_backend_without_accelerate_is_refused_up_front():
    import importlib.util

    if importlib.util.find_spec("accelerate") is not None:
        pytest.skip("accelerate is installed here: the hf backend is usable")
    with pytest.raises(ValidationError, match="needs the accelerate package"):
        EvalConfig.model_validate({"harness": {"backend": "hf"}})
