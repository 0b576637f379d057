"""Teachers for R1-style distillation, chosen by config ``kind``:

    procedural  built-in, offline (the embedded default): solves generated problems step by step
    openai      any OpenAI-compatible endpoint (reasoning in `reasoning_content`, `reasoning` or <think>)
    dataset     existing traces, OpenR1-style chat rows in JSONL / Parquet
    local       a local checkpoint generating through model.engine

    teacher = build_teacher(ProceduralTeacherConfig(error_rate=0.1))
    completions = teacher.complete(problem, n=4, seed=0)

The dataset teacher brings its own prompts: it exposes ``iter_samples()`` instead of ``complete``.
"""

from __future__ import annotations

from pydantic import TypeAdapter

from stages.distill.teachers.base import (
    Completion,
    Teacher,
    TeacherError,
    TeacherUnavailable,
    approx_tokens,
    completion_from_message,
    split_think,
)
from stages.distill.teachers.config import (
    DatasetTeacherConfig,
    LocalTeacherConfig,
    OpenAITeacherConfig,
    ProceduralTeacherConfig,
    TeacherConfig,
)

__all__ = ["Completion", "Teacher", "TeacherError", "TeacherUnavailable", "approx_tokens",
           "completion_from_message", "split_think", "DatasetTeacherConfig", "LocalTeacherConfig",
           "OpenAITeacherConfig", "ProceduralTeacherConfig", "TeacherConfig", "build_teacher",
           "parse_teacher_config"]


def parse_teacher_config(raw: dict):
    """A dict (from YAML) -> the teacher config its ``kind`` names; unknown keys are errors."""
    return TypeAdapter(TeacherConfig).validate_python(raw)


def build_teacher(cfg):
    """The teacher object for a config (raises TeacherUnavailable on a config problem)."""
    if isinstance(cfg, dict):
        cfg = parse_teacher_config(cfg)
    if isinstance(cfg, ProceduralTeacherConfig):
        from stages.distill.teachers.procedural import ProceduralTeacher
        return ProceduralTeacher(cfg)
    if isinstance(cfg, OpenAITeacherConfig):
        from stages.distill.teachers.openai_compat import OpenAITeacher
        return OpenAITeacher(cfg)
    if isinstance(cfg, DatasetTeacherConfig):
        from stages.distill.teachers.dataset import DatasetTeacher
        return DatasetTeacher(cfg)
    if isinstance(cfg, LocalTeacherConfig):
        from stages.distill.teachers.local import LocalTeacher
        return LocalTeacher(cfg)
    raise TypeError(f"not a teacher config: {type(cfg).__name__}")
