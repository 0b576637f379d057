"""The chat template, its token-level form with the training mask, and reasoning parsing.

A conversation renders as (one line here, no newlines in the real thing):

    <｜begin▁of▁sentence｜>
    <｜System｜>{system}                                       (optional, any number)
    <｜User｜>{user}
    <｜Assistant｜><think>\\n{reasoning}\\n</think>\\n\\n{answer}<｜end▁of▁sentence｜>
    ...
    <｜Assistant｜>                                            (the generation prompt)

Rules (the same in ``render`` and in the Jinja ``CHAT_TEMPLATE`` exported for Hugging Face):
- Reasoning (``reasoning_content``, or the older names ``thinking`` / ``reasoning``, as
  transformers aliases them) is rendered only for assistant turns after the last user message;
  earlier turns keep their answer only, as DeepSeek-R1 does, because clients send history
  without reasoning, so training and serving see the same context.
- The generation prompt is the bare ``<｜Assistant｜>``: the model writes ``<think>`` itself, so
  ``render(history, add_generation_prompt=True) + completion == render(history + [reply])``.
- The assistant's end of turn is EOS, the stop token at generation time.
- ``content`` may be a string, None, or a list of ``{"type": "text", "text": ...}`` parts.

The training mask (``encode_chat``) marks what the assistant produces after its marker: the
``<think>`` block, the answer and the closing EOS. The exported template wraps exactly those
tokens in ``{% generation %}``, so transformers'
``apply_chat_template(..., return_assistant_tokens_mask=True)`` gives the same mask.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tokenizer.special import ASSISTANT, BOS, BY_TEXT, EOS, SYSTEM, THINK, THINK_END, USER

if TYPE_CHECKING:
    from tokenizer.tokenizer import Tokenizer

REASONING_KEYS = ("reasoning_content", "thinking", "reasoning")  # transformers' alias order

# Message text through the exported template: every "<" becomes this private-use character, which
# the exported tokenizer's normalizer turns back into "<" *after* special tokens were matched on
# the raw string. So "<｜end▁of▁sentence｜>" typed by a user can never match a special token in
# transformers / vLLM, and still encodes to the same ids as Whale's own tokenizer (plain text).
# (A literal U+E000 in message text therefore reads as "<" through the HF export.)
HF_TEXT_ESCAPE = "\ue000"
ROLES = ("system", "user", "assistant")
TRAIN_ON = ("last", "all")

# Whitespace control ({%- -%}) everywhere: the template emits nothing but the expressions.
CHAT_TEMPLATE = (
    "{%- set ns = namespace(last_user=-1) -%}"
    "{%- for message in messages -%}"
    "{%- if message.role == 'user' -%}{%- set ns.last_user = loop.index0 -%}{%- endif -%}"
    "{%- endfor -%}"
    "{{- bos_token -}}"
    "{%- for message in messages -%}"
    "{%- if message.content is string -%}{%- set content = message.content -%}"
    "{%- elif message.content is defined and message.content is not none -%}"
    "{%- set content = message.content | map(attribute='text') | join('') -%}"
    "{%- else -%}{%- set content = '' -%}{%- endif -%}"
    "{%- set content = content | replace('<', '" + HF_TEXT_ESCAPE + "') -%}"
    "{%- if message.role == 'system' -%}{{- '" + SYSTEM + "' + content -}}"
    "{%- elif message.role == 'user' -%}{{- '" + USER + "' + content -}}"
    "{%- elif message.role == 'assistant' -%}"
    "{{- '" + ASSISTANT + "' -}}"
    "{%- if loop.index0 > ns.last_user -%}"
    "{%- generation -%}"
    "{%- if message.reasoning_content is string -%}"
    "{{- '" + THINK + "\\n' + (message.reasoning_content | replace('<', '" + HF_TEXT_ESCAPE + "'))"
    " + '\\n" + THINK_END + "\\n\\n' -}}"
    "{%- endif -%}"
    "{{- content + eos_token -}}"
    "{%- endgeneration -%}"
    "{%- else -%}{{- content + eos_token -}}{%- endif -%}"
    "{%- else -%}{{- raise_exception('unsupported chat role: ' + message.role) -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '" + ASSISTANT + "' -}}{%- endif -%}"
)


@dataclass(frozen=True)
class _Segment:
    text: str
    special: bool  # a special token's text (one token), or plain text to encode
    train: bool = False


@dataclass
class ChatEncoding:
    ids: list[int]
    # 1 where the token is trained on (assistant output incl. its EOS), else 0
    mask: list[int]

    def __len__(self) -> int:
        return len(self.ids)


def _content(message: dict, index: int) -> str:
    content = message.get("content")
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, (list, tuple)):
        texts = []
        for part in content:
            if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
                raise ValueError(f"message {index}: content parts must be {{'type': 'text', 'text': str}}, "
                                 f"got {part!r}")
            texts.append(part["text"])
        return "".join(texts)
    raise ValueError(f"message {index}: content must be a string, None or a list of text parts, "
                     f"got {type(content).__name__}")


def _reasoning(message: dict, index: int) -> str | None:
    value = next((message[k] for k in REASONING_KEYS if message.get(k) is not None), None)
    if value is not None and not isinstance(value, str):
        raise ValueError(f"message {index}: reasoning must be a string, got {type(value).__name__}")
    return value


def _segments(messages: Sequence[dict], add_generation_prompt: bool, train_on: str) -> list[_Segment]:
    if train_on not in TRAIN_ON:
        raise ValueError(f"train_on={train_on!r}: expected one of {TRAIN_ON}")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            role = m.get("role") if isinstance(m, dict) else None
            raise ValueError(f"message {i}: role must be one of {ROLES}, got {role!r}")
    last_user = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=-1)
    segs = [_Segment(BOS, True)]
    for i, m in enumerate(messages):
        content = _content(m, i)
        if m["role"] == "system":
            segs += [_Segment(SYSTEM, True), _Segment(content, False)]
        elif m["role"] == "user":
            segs += [_Segment(USER, True), _Segment(content, False)]
        else:
            current = i > last_user
            train = current or train_on == "all"
            segs.append(_Segment(ASSISTANT, True))
            reasoning = _reasoning(m, i) if current else None
            if reasoning is not None:
                segs += [_Segment(THINK, True, train), _Segment(f"\n{reasoning}\n", False, train),
                         _Segment(THINK_END, True, train), _Segment(f"\n\n{content}", False, train)]
            else:
                segs.append(_Segment(content, False, train))
            segs.append(_Segment(EOS, True, train))
    if add_generation_prompt:
        segs.append(_Segment(ASSISTANT, True))
    return segs


def render(messages: Sequence[dict], add_generation_prompt: bool = False) -> str:
    return "".join(s.text for s in _segments(messages, add_generation_prompt, "last"))


def encode_chat(tok: "Tokenizer", messages: Sequence[dict], add_generation_prompt: bool = False,
                train_on: str = "last") -> ChatEncoding:
    """Segment-wise encoding: markers are inserted as ids, message text is encoded as plain text.
    Equals ``tok.encode(render(messages), allow_special=True)`` whenever no message contains a
    special token's text (then that string form would be an injection)."""
    ids: list[int] = []
    mask: list[int] = []
    for seg in _segments(messages, add_generation_prompt, train_on):
        piece = [BY_TEXT[seg.text].id] if seg.special else tok.encode(seg.text)
        ids += piece
        mask += [int(seg.train)] * len(piece)
    return ChatEncoding(ids, mask)


def format_completion(reasoning: str | None, answer: str) -> str:
    """What the assistant writes after its marker (without the EOS)."""
    if reasoning is None:
        return answer
    return f"{THINK}\n{reasoning}\n{THINK_END}\n\n{answer}"


def split_reasoning(completion: str) -> tuple[str | None, str]:
    """(reasoning, answer) of an assistant completion; reasoning is None when there is none.

    The inverse of ``format_completion``, and robust to what models emit: leading whitespace
    before <think>, a trailing EOS, a missing </think> (generation cut off mid-thought: it is all
    reasoning, the answer is empty), or a missing <think> when the prompt already opened it."""
    text = completion.removesuffix(EOS)
    head = text.lstrip()
    if head.startswith(THINK):
        body = head[len(THINK):]
        reasoning, closed, answer = body.partition(THINK_END)
        if not closed:
            return reasoning.removeprefix("\n"), ""
    elif THINK_END in text:
        reasoning, _, answer = text.partition(THINK_END)
    else:
        return None, text
    reasoning = reasoning.removeprefix("\n").removesuffix("\n")
    answer = answer.removeprefix("\n\n") if answer.startswith("\n\n") else answer.removeprefix("\n")
    return reasoning, answer
