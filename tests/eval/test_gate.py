"""The gate: its rules alone, then the whole stage against the session's real MLflow server and
real registry aliases (first model, better candidate, worse candidate, allowed regression, floors).

The models have known orderings on bits per byte: the uniform model (zero output head) scores
log2(V)·tokens/bytes; the "spiky" one (large random output head) is confidently wrong and scores
far worse. The gate is configured on web and code bits per byte only, so each run takes seconds.
"""

from __future__ import annotations

import json
import math
import uuid

import pytest

from pipeline.tracking import Tracker
from stages.eval.config import GateRule
from stages.eval.gate import decide
from stages.eval.run import GateFailed, run
from tests.eval.conftest import lm_only_config, stage_context

# -- the rules alone ---------------------------------------------------------------------------


def test_direction_comes_from_the_metric_name():
    assert not GateRule(metric="lm/web/bpb", floor=2).higher_is_better
    assert GateRule(metric="reasoning/pass_at_1", floor=0).higher_is_better
    assert not GateRule(metric="lm_eval/x/acc", floor=0, direction="lower").higher_is_better


def test_floors_and_regressions_in_each_direction():
    rules = [GateRule(metric="reasoning/pass_at_1", floor=0.2, max_regression=0.05),
             GateRule(metric="lm/web/bpb", floor=3.0, max_regression=0.1)]
    champ = {"reasoning/pass_at_1": 0.5, "lm/web/bpb": 2.0}
    assert decide(rules, {"reasoning/pass_at_1": 0.46, "lm/web/bpb": 2.09}, champ).passed
    d = decide(rules, {"reasoning/pass_at_1": 0.44, "lm/web/bpb": 2.2}, champ)
    assert not d.passed and [(c.metric, c.kind) for c in d.failures] == [
        ("reasoning/pass_at_1", "regression"), ("lm/web/bpb", "regression")]
    d = decide(rules, {"reasoning/pass_at_1": 0.1, "lm/web/bpb": 3.5}, None)   # no champion: floors only
    assert [(c.metric, c.kind) for c in d.failures] == [("reasoning/pass_at_1", "floor"), ("lm/web/bpb", "floor")]
    assert all(c.status == "skipped" for c in d.checks if c.kind == "regression")


def test_allow_regression_waives_regressions_but_never_floors_nan_or_missing():
    rules = [GateRule(metric="reasoning/pass_at_1", floor=0.2, max_regression=0.0),
             GateRule(metric="humaneval/pass_at_1", max_regression=0.0)]
    champ = {"reasoning/pass_at_1": 0.9, "humaneval/pass_at_1": 0.5}
    d = decide(rules, {"reasoning/pass_at_1": 0.3, "humaneval/pass_at_1": 0.1}, champ, allow_regression=True)
    assert d.passed and len(d.waived) == 2
    d = decide(rules, {"reasoning/pass_at_1": 0.1, "humaneval/pass_at_1": math.nan}, champ, allow_regression=True)
    assert not d.passed
    assert {c.metric: c.kind for c in d.failures} == {"reasoning/pass_at_1": "floor", "humaneval/pass_at_1": "measured"}
    d = decide([GateRule(metric="lm_eval/arc_easy/acc", floor=0.3)], {}, None, allow_regression=True,
               missing_reason={"lm_eval/arc_easy/acc": "lm-eval task arc_easy skipped: offline"})
    assert not d.passed and "not measured (lm-eval task arc_easy skipped: offline)" in d.message()
    optional = GateRule(metric="lm_eval/arc_easy/acc", floor=0.3, required=False)
    assert decide([optional], {}, None).passed


def test_comparison_rows_carry_direction_delta_and_checks():
    from stages.eval.comparison import markdown, rows

    rules = [GateRule(metric="lm/web/bpb", floor=8.0, max_regression=0.1)]
    cand, champ = {"lm/web/bpb": 2.5, "humaneval/samples": 80, "reasoning/pass_at_1": 0.5}, {"lm/web/bpb": 2.0}
    table = {r["metric"]: r for r in rows(cand, champ, decide(rules, cand, champ).checks)}
    assert table["lm/web/bpb"]["better"] == "lower" and table["lm/web/bpb"]["delta"] == pytest.approx(0.5)
    assert table["lm/web/bpb"]["gate"] == "floor:pass, regression:fail"
    assert table["humaneval/samples"]["better"] == "-" and table["reasoning/pass_at_1"]["champion"] is None
    assert "| language_modelling | lm/web/bpb | lower | 2.5 | 2 | 0.5 |" in markdown(list(table.values()), "v2", "v1")


# -- the stage against the real registry -------------------------------------------------------

@pytest.fixture
def registry(mlflow_server):
    """(client, register(kind) -> version as @candidate, evaluate(**cfg) -> (summary | exception, run id))."""
    from mlflow import MlflowClient

    client = MlflowClient(mlflow_server)
    name = f"eval-gate-{uuid.uuid4().hex[:8]}"
    exp = client.get_experiment_by_name("eval-tests")
    exp_id = exp.experiment_id if exp else client.create_experiment("eval-tests")
    return client, name, exp_id


def _register(client, exp_id, uri, name, path, alias="candidate") -> str:
    run = client.create_run(exp_id, run_name="distill (test)")
    version = Tracker(run.info.run_id, uri).register_model(path, name=name, alias=alias)
    client.set_terminated(run.info.run_id)
    return version


def _evaluate(client, exp_id, uri, name, tmp_path, tokenizer_out, distill_out, **over):
    run_id = client.create_run(exp_id, run_name="eval (test)").info.run_id
    ctx = stage_context(tmp_path / uuid.uuid4().hex[:6], tokenizer_out, distill_out,
                        tracker=Tracker(run_id, uri), name=name)
    try:
        return run(lm_only_config(**over), ctx), run_id
    except GateFailed as e:
        return e, run_id


def _alias(client, name, alias="champion") -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias).version
    except MlflowException:
        return None


def test_first_model_without_champion_passes_on_floors_and_becomes_champion(
        registry, mlflow_server, models, tmp_path, tokenizer_out, distill_out):
    client, name, exp = registry
    v1 = _register(client, exp, mlflow_server, name, models["spiky"])
    summary, run_id = _evaluate(client, exp, mlflow_server, name, tmp_path, tokenizer_out, distill_out)
    assert summary["gate"] == "pass" and summary["champion"] == "none"
    assert summary["candidate"] == f"{name} v{v1}" and summary["promoted"] == f"{name} v{v1}"
    assert _alias(client, name) == v1
    tags = client.get_run(run_id).data.tags
    assert tags["eval.gate"] == "pass" and tags["eval.candidate_version"] == v1
    assert tags["eval.champion_version"] == "none"
    assert client.get_model_version(name, v1).tags["eval.gate"] == "pass"


def test_better_candidate_passes_and_takes_the_alias(registry, mlflow_server, models, tmp_path, tokenizer_out,
                                                     distill_out):
    client, name, exp = registry
    v1 = _register(client, exp, mlflow_server, name, models["spiky"], alias="champion")
    v2 = _register(client, exp, mlflow_server, name, models["uniform"])
    summary, run_id = _evaluate(client, exp, mlflow_server, name, tmp_path, tokenizer_out, distill_out)
    assert summary["gate"] == "pass", summary
    # the champion was evaluated in the same run, on the same text
    assert summary["champion"] == f"{name} v{v1}"
    assert summary["candidate/lm/web/bpb"] < summary["champion/lm/web/bpb"]
    assert summary["candidate/lm/web/bytes"] == summary["champion/lm/web/bytes"]
    assert _alias(client, name) == v2
    run = client.get_run(run_id)
    assert run.data.tags["eval.champion_version"] == v1 and run.data.tags["eval.promoted"] == f"{name} v{v2}"
    assert run.data.metrics["champion/lm/web/bpb"] == pytest.approx(summary["champion/lm/web/bpb"])
    table_path = client.download_artifacts(run_id, "comparison.json", str(tmp_path))
    table = json.loads(open(table_path).read())
    rows = [dict(zip(table["columns"], r, strict=True)) for r in table["data"]]
    web = next(r for r in rows if r["metric"] == "lm/web/bpb")
    assert web["candidate"] < web["champion"] and web["better"] == "lower" and "regression:pass" in web["gate"]


def test_worse_candidate_fails_and_the_alias_stays(registry, mlflow_server, models, tmp_path, tokenizer_out,
                                                   distill_out):
    client, name, exp = registry
    v1 = _register(client, exp, mlflow_server, name, models["uniform"], alias="champion")
    v2 = _register(client, exp, mlflow_server, name, models["spiky"])
    summary, run_id = _evaluate(client, exp, mlflow_server, name, tmp_path, tokenizer_out, distill_out)
    # refused, and the stage returns: serve keeps the champion
    assert summary["gate"] == "fail" and summary["serving"] == f"{name} v{v1}", summary
    assert f"{name} v{v2} did not pass the gate against {name} v{v1}" in summary["refusal"]
    assert "lm/web/bpb" in summary["refusal"] and "--allow-regression" in summary["refusal"]
    assert _alias(client, name) == v1
    run = client.get_run(run_id)
    assert run.data.tags["eval.gate"] == "fail" and run.data.tags["eval.promoted"] == "no (gate failed)"
    assert run.data.metrics["gate/passed"] == 0.0
    gate = json.loads(open(client.download_artifacts(run_id, "gate.json", str(tmp_path))).read())
    assert gate["candidate"]["version"] == v2 and gate["champion"]["version"] == v1
    assert {c["metric"] for c in gate["checks"] if c["status"] == "fail"} == {"lm/web/bpb", "lm/code/bpb"}

    # --allow-regression: the same regression no longer blocks, and the alias moves
    summary, _ = _evaluate(client, exp, mlflow_server, name, tmp_path, tokenizer_out, distill_out,
                           allow_regression=True)
    assert summary["gate"] == "pass" and summary["gate_regressions_allowed"] == 2
    assert _alias(client, name) == v2


def test_floor_failure_blocks_even_without_champion(registry, mlflow_server, models, tmp_path, tokenizer_out,
                                                    distill_out):
    client, name, exp = registry
    _register(client, exp, mlflow_server, name, models["spiky"])
    strict = {"rules": [{"metric": "lm/web/bpb", "floor": 1.0}]}
    err, _ = _evaluate(client, exp, mlflow_server, name, tmp_path, tokenizer_out, distill_out, gate=strict)
    assert isinstance(err, GateFailed) and "the floors (no champion yet)" in str(err)
    assert "misses the floor <= 1" in str(err) and "--allow-regression" not in str(err)   # it would not help
    assert _alias(client, name) is None
    # allow_regression does not lift floors: recorded as a failure, the stage returns, nothing moves
    summary, _ = _evaluate(client, exp, mlflow_server, name, tmp_path, tokenizer_out, distill_out, gate=strict,
                           allow_regression=True)
    assert summary["gate"] == "fail" and summary["promoted"] == "no (gate failed)"
    assert _alias(client, name) is None


def test_explicit_candidate_path_is_registered_on_a_pass(registry, mlflow_server, models, tmp_path, tokenizer_out,
                                                         distill_out):
    client, name, exp = registry
    summary, _ = _evaluate(client, exp, mlflow_server, name, tmp_path, tokenizer_out, distill_out,
                           candidate=str(models["uniform"]))
    assert summary["gate"] == "pass" and summary["candidate"] == str(models["uniform"])
    version = _alias(client, name)
    assert version is not None and summary["promoted"] == f"{name} v{version}"


def test_candidate_that_is_already_champion_is_compared_with_itself(registry, mlflow_server, models, tmp_path,
                                                                     tokenizer_out, distill_out):
    client, name, exp = registry
    v1 = _register(client, exp, mlflow_server, name, models["random"])
    client.set_registered_model_alias(name, "champion", v1)
    summary, _ = _evaluate(client, exp, mlflow_server, name, tmp_path, tokenizer_out, distill_out)
    assert summary["gate"] == "pass" and summary["promoted"] == "unchanged (the candidate is already champion)"
    assert summary["candidate/lm/web/bpb"] == summary["champion/lm/web/bpb"]
    assert _alias(client, name) == v1


def test_cli_flags_become_config_overrides():
    import argparse

    from pipeline.config import parse_config
    from pipeline.registry import default_stages
    from stages.eval.__main__ import _extra_args

    parser = argparse.ArgumentParser()
    to_overrides = _extra_args(parser)
    overrides = to_overrides(parser.parse_args(["--model", "models:/tiny@candidate", "--allow-regression"]))
    assert overrides == ["eval.candidate=models:/tiny@candidate", "eval.allow_regression=true"]
    cfg = parse_config({"name": "tiny"}, default_stages(), overrides)
    assert cfg["eval"].candidate == "models:/tiny@candidate" and cfg["eval"].allow_regression


# -- checks against the base, the unigram baseline and measured noise ------------------------------

def test_general_text_must_stay_near_the_base_and_below_the_unigram_model():
    rule = GateRule(metric="lm/web/bpb", base_tolerance=0.10, below_unigram=True)
    base, unigram = {"lm/web/bpb": 2.0}, {"lm/web/bpb": 2.75}
    assert decide([rule], {"lm/web/bpb": 2.19}, None, base=base, unigram=unigram).passed
    d = decide([rule], {"lm/web/bpb": 2.3}, None, base=base, unigram=unigram)        # 1.15x the base
    assert [c.kind for c in d.failures] == ["vs_base"] and "1.150x" in d.failures[0].detail
    d = decide([GateRule(metric="lm/web/bpb", base_tolerance=1.0, below_unigram=True)], {"lm/web/bpb": 3.0}, None,
               base=base, unigram=unigram)                                          # within 2x, above unigram
    assert [c.kind for c in d.failures] == ["unigram"] and "NOT below the unigram baseline" in d.message()
    d = decide([rule], {"lm/web/bpb": 2.0}, None, base=None, unigram=unigram)        # no base measured
    assert [c.kind for c in d.failures] == ["vs_base"]


def test_reasoning_gain_must_be_clear_and_zero_against_zero_proves_nothing():
    rule = GateRule(metric="reasoning/arithmetic/greedy_pass_at_1", gain_over_base=True)
    m = "reasoning/arithmetic/greedy_pass_at_1"
    clear = decide([rule], {m: 0.35}, None, base={m: 0.0}, paired={(m, "base"): (0.35, 0.27, 0.43)})
    assert clear.passed and clear.checks[0].kind == "gain"
    noise = decide([rule], {m: 0.06}, None, base={m: 0.03}, paired={(m, "base"): (0.03, -0.02, 0.08)})
    assert not noise.passed and "not distinguishable from noise" in noise.message()
    zero = decide([rule], {m: 0.0}, None, base={m: 0.0}, paired={(m, "base"): (0.0, 0.0, 0.0)})
    assert not zero.passed and zero.uninformative and "uninformative" in zero.message()


def test_champion_regression_beyond_noise_fails_within_noise_passes_zero_is_uninformative():
    m = "reasoning/arithmetic/greedy_pass_at_1"
    rule = GateRule(metric=m, regression_test="ci")
    assert decide([rule], {m: 0.30}, {m: 0.33}, paired={(m, "champion"): (-0.03, -0.09, 0.03)}).passed
    d = decide([rule], {m: 0.10}, {m: 0.33}, paired={(m, "champion"): (-0.23, -0.30, -0.16)})
    assert not d.passed and "worse beyond noise" in d.message()
    d = decide([GateRule(metric="humaneval/pass_at_1", max_regression=0.05)], {"humaneval/pass_at_1": 0.0},
               {"humaneval/pass_at_1": 0.0})
    assert d.passed and d.checks[0].status == "uninformative" and not d.checks[0].informative
    assert "held" in d.message() and "uninformative (not counted): humaneval/pass_at_1" in d.message()
    assert sum(c.status == "pass" for c in d.checks) == 0


def _sgd_steps(src, dst, tokenizer_out, *, lr: float, steps: int, seed: int = 0):
    """``steps`` real AdamW steps of next-token training on the training shards, from model ``src``."""
    import shutil

    import torch

    from model import DeepSeekV3
    from tokenizer.shards import ShardReader

    torch.manual_seed(seed)
    model = DeepSeekV3.from_pretrained(src).train()
    reader = ShardReader(tokenizer_out / "shards", "train", 63, sources=["web"], mix="natural", seed=seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    for step in range(steps):
        ids = torch.stack([torch.from_numpy(reader[(step * 8 + i) % len(reader)]) for i in range(8)])
        loss = model(ids, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    shutil.copytree(src, dst)
    model.eval().save_pretrained(dst)
    return dst


def test_damaged_candidate_is_refused_against_the_base_and_the_champion_stays(
        registry, mlflow_server, models, tmp_path, tokenizer_out, distill_out, capsys):
    """What `--set distill.train.optimizer.lr=0.5` makes: the base fine-tuned at lr 0.5 for a few steps.
    The base (a model trained at a sane rate, below the unigram baseline) is champion and @base."""
    client, name, exp = registry
    base = _sgd_steps(models["random"], tmp_path / "base", tokenizer_out, lr=3e-3, steps=40)
    damaged = _sgd_steps(base, tmp_path / "damaged", tokenizer_out, lr=0.5, steps=6, seed=1)
    v_base = _register(client, exp, mlflow_server, name, base, alias="base")
    client.set_registered_model_alias(name, "champion", v_base)
    v_bad = _register(client, exp, mlflow_server, name, damaged)
    rules = {"rules": [{"metric": "lm/web/bpb", "base_tolerance": 0.10, "below_unigram": True, "max_regression": 0.05},
                       {"metric": "lm/code/bpb", "below_unigram": True}]}
    summary, run_id = _evaluate(client, exp, mlflow_server, name, tmp_path, tokenizer_out, distill_out, gate=rules)
    assert summary["gate"] == "fail" and summary["serving"] == f"{name} v{v_base}", summary
    assert _alias(client, name) == v_base and _alias(client, name, "candidate") == v_bad
    out = capsys.readouterr().out
    assert f"REFUSED {name} v{v_bad}" in out and "serve keeps the champion" in out
    gate = json.loads(open(client.download_artifacts(run_id, "gate.json", str(tmp_path))).read())
    failed = {(c["metric"], c["kind"]) for c in gate["checks"] if c["status"] == "fail"}
    assert ("lm/web/bpb", "vs_base") in failed and ("lm/web/bpb", "regression") in failed
    metrics = client.get_run(run_id).data.metrics
    assert metrics["gate/passed"] == 0.0
    assert metrics["base/lm/web/bpb"] < metrics["unigram/lm/web/bpb"]       # the base is a real model
    assert metrics["candidate/lm/web/bpb"] > 1.1 * metrics["base/lm/web/bpb"]

    # the base itself as candidate passes the same rules (the checks can pass, too)
    v_again = _register(client, exp, mlflow_server, name, base)
    summary, _ = _evaluate(client, exp, mlflow_server, name, tmp_path, tokenizer_out, distill_out, gate=rules)
    assert summary["gate"] == "pass", summary
    assert _alias(client, name) == v_again


def test_refused_first_candidate_leaves_the_registered_base_as_champion(
        registry, mlflow_server, models, tmp_path, tokenizer_out, distill_out, capsys):
    """No champion yet and the candidate is refused: the base it failed to beat becomes champion, so the
    pipeline still serves the best model it measured (and never the refused one)."""
    client, name, exp = registry
    v_base = _register(client, exp, mlflow_server, name, models["uniform"], alias="base")
    v_cand = _register(client, exp, mlflow_server, name, models["spiky"])
    strict = {"rules": [{"metric": "lm/web/bpb", "floor": 1.0}]}
    summary, _ = _evaluate(client, exp, mlflow_server, name, tmp_path, tokenizer_out, distill_out, gate=strict)
    assert summary["gate"] == "fail" and summary["serving"] == f"{name} v{v_base}", summary
    assert _alias(client, name) == v_base != v_cand
    out = capsys.readouterr().out
    assert f"REFUSED {name} v{v_cand}" in out and "becomes 'champion' and serve deploys it" in out
