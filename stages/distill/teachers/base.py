"""What every teacher returns, and the errors the rejection pipeline counts."""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

from stages.common.problems import Problem

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
_THINK_TAG = re.compile(r"</?think>")
_APPROX_TOKEN = re.compile(r"\d|[^\W\d_]+|[^\w\s]|_")


def approx_tokens(text: str) -> int:
    """A tokenizer-free length: letters runs, single digits and punctuation marks each count one.

    Digits count one each because BPE vocabularies trained with digit splitting (ours) do;
    a real tokenizer's count can replace it where one is at hand.
    """
    return len(_APPROX_TOKEN.findall(text))


@dataclass
class Completion:
    """One sampled answer: the reasoning (without tags) and the final answer text."""

    reasoning: str | None
    content: str
    think_blocks: int = 0           # reasoning blocks seen (separate field counts as one)
    finish_reason: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


def split_think(text: str) -> tuple[str | None, str, int]:
    """(reasoning, answer, number of reasoning blocks) from text with inline <think> tags.

    Handles a missing opening tag (chat templates that open <think> in the prompt, as
    DeepSeek-R1's does): text before a lone </think> is the reasoning. An unclosed <think>
    means the generation stopped mid-thought: all reasoning, empty answer.
    """
    opens, closes = text.count(THINK_OPEN), text.count(THINK_CLOSE)
    blocks = max(opens, closes)
    if blocks == 0:
        return None, text.strip(), 0
    head = text.lstrip()
    if head.startswith(THINK_OPEN):
        body = head[len(THINK_OPEN):]
        reasoning, closed, answer = body.partition(THINK_CLOSE)
        if not closed:
            return reasoning.strip(), "", blocks
    elif THINK_CLOSE in text and opens == 0:
        reasoning, _, answer = text.partition(THINK_CLOSE)
    else:  # tags somewhere in the middle: keep the text, let the format filter reject it
        return None, text.strip(), blocks
    return reasoning.strip(), answer.strip(), blocks


def completion_from_message(message: dict, finish_reason: str | None = None) -> Completion:
    """An OpenAI-style assistant message -> Completion.

    Reasoning may come as ``reasoning_content`` (DeepSeek API, SGLang, older vLLM),
    ``reasoning`` (current vLLM) or inline ``<think>`` tags in ``content``: all three work.
    """
    content = message.get("content")
    if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
        content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
    content = content or ""
    field_reasoning = message.get("reasoning_content") or message.get("reasoning")
    if isinstance(field_reasoning, str) and field_reasoning.strip():
        inline = len(_THINK_TAG.findall(content))
        # a separate field is one block; any tags left in content are extra blocks
        return Completion(field_reasoning.strip(), content.strip(), 1 + (inline + 1) // 2, finish_reason)
    reasoning, answer, blocks = split_think(content)
    return Completion(reasoning, answer, blocks, finish_reason)


class TeacherError(RuntimeError):
    """A teacher call failed for good (after its retries). ``kind``: "error" or "timeout"."""

    def __init__(self, message: str, kind: str = "error"):
        super().__init__(message)
        self.kind = kind


class TeacherUnavailable(RuntimeError):
    """The teacher cannot be built (missing API key, checkpoint, dataset): a config problem."""


class Teacher(ABC):
    """Samples completions for problems. Implementations must be thread-safe."""

    name: str = "teacher"

    @abstractmethod
    def complete(self, problem: Problem, n: int, *, seed: int = 0) -> list[Completion]:
        """n completions for the problem's prompt; raise TeacherError when the call fails."""

    def close(self) -> None:  # noqa: B027 - optional hook: most teachers hold nothing to release
        """Release connections / models; the pipeline calls it for teachers it built itself."""

    def describe(self) -> dict[str, Any]:
        return {"name": self.name}
