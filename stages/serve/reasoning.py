"""Split a streamed assistant completion into reasoning and answer as text arrives.

The model writes ``<think>\\n{reasoning}\\n</think>\\n\\n{answer}`` (tokenizer.chat). Deltas are
released as soon as they are certain; the concatenated deltas equal
``tokenizer.split_reasoning(full_text)`` for completions that open with ``<think>`` (also when
cut off before ``</think>``). A completion that does not open with ``<think>`` is all answer.
Whitespace the template puts around the tags is dropped exactly as ``split_reasoning`` drops it,
so streamed and non-streamed responses agree (both run through this class).
"""

from __future__ import annotations

import enum

from tokenizer.special import THINK, THINK_END


class _State(enum.Enum):
    START = 0            # not yet known whether the completion opens with <think>
    REASONING_START = 1  # just after <think>: one "\n" to drop
    REASONING = 2
    ANSWER_START = 3     # just after </think>: "\n\n" (or "\n") to drop
    ANSWER = 4


def _partial_suffix(text: str, pattern: str) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of ``pattern``."""
    for k in range(min(len(pattern) - 1, len(text)), 0, -1):
        if text.endswith(pattern[:k]):
            return k
    return 0


class ReasoningSplitter:
    def __init__(self):
        self._state = _State.START
        self._buf = ""
        self.has_reasoning = False

    def feed(self, text: str) -> tuple[str, str]:
        """(reasoning delta, answer delta) that ``text`` makes certain."""
        self._buf += text
        reasoning, answer = "", ""
        while True:
            st, buf = self._state, self._buf
            if st is _State.START:
                head = buf.lstrip()
                if not head or (THINK.startswith(head) and head != THINK):
                    break                                   # whitespace or a partial tag: wait
                if head.startswith(THINK):
                    self._state, self._buf, self.has_reasoning = _State.REASONING_START, head[len(THINK):], True
                else:
                    self._state = _State.ANSWER
            elif st is _State.REASONING_START:
                if not buf:
                    break
                self._state, self._buf = _State.REASONING, buf.removeprefix("\n")
            elif st is _State.REASONING:
                head, closed, tail = buf.partition(THINK_END)
                if closed:
                    reasoning += head.removesuffix("\n")
                    self._state, self._buf = _State.ANSWER_START, tail
                    continue
                keep = max(_partial_suffix(buf, "\n" + THINK_END), _partial_suffix(buf, THINK_END))
                reasoning += buf[:len(buf) - keep]
                self._buf = buf[len(buf) - keep:]
                break
            elif st is _State.ANSWER_START:
                if buf in ("", "\n"):
                    break                                   # "\n" may be the first of "\n\n"
                cut = 2 if buf.startswith("\n\n") else 1 if buf.startswith("\n") else 0
                self._state, self._buf = _State.ANSWER, buf[cut:]
            else:  # ANSWER
                answer += buf
                self._buf = ""
                break
        return reasoning, answer

    def finish(self) -> tuple[str, str]:
        """Release what is held at the end of the completion."""
        buf, self._buf = self._buf, ""
        if self._state is _State.START:
            return "", buf                   # no <think>: all answer, whitespace included
        if self._state is _State.REASONING:
            return buf, ""                   # cut off mid-thought: the rest is reasoning
        return "", ""                        # REASONING_START / ANSWER_START hold only template whitespace
