"""Teacher over any OpenAI-compatible chat-completions endpoint (vLLM, SGLang, DeepSeek API, our serve).

Plain httpx rather than the ``openai`` client: we need the non-standard ``reasoning`` /
``reasoning_content`` fields verbatim and our own retry policy (exponential backoff with
jitter, Retry-After honoured, 4xx other than 408/409/425/429 not retried), after which the
call fails with a TeacherError that the pipeline counts and skips.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections import Counter

import httpx

from stages.common.problems import Problem
from stages.distill.teachers.base import Completion, Teacher, TeacherError, TeacherUnavailable, completion_from_message
from stages.distill.teachers.config import OpenAITeacherConfig

_RETRYABLE_STATUS = {408, 409, 425, 429}


class OpenAITeacher(Teacher):
    name = "openai"

    def __init__(self, cfg: OpenAITeacherConfig):
        self.cfg = cfg
        headers = {}
        if cfg.api_key_env:
            key = os.environ.get(cfg.api_key_env)
            if not key:
                raise TeacherUnavailable(
                    f"teacher.api_key_env names {cfg.api_key_env!r} but that environment variable is not set; "
                    f"export it, or set api_key_env: null for a server without authentication")
            headers["Authorization"] = f"Bearer {key}"
        self.client = httpx.Client(base_url=cfg.base_url, headers=headers,
                                   timeout=httpx.Timeout(cfg.timeout_s, connect=min(10.0, cfg.timeout_s)),
                                   limits=httpx.Limits(max_connections=cfg.concurrency))
        self._slots = threading.BoundedSemaphore(cfg.concurrency)
        self._lock = threading.Lock()
        self.counters: Counter = Counter()  # requests, retries, failed_error, failed_timeout

    def describe(self):
        return {"name": self.name, "base_url": self.cfg.base_url, "model": self.cfg.model,
                "requests": dict(self.counters)}

    def complete(self, problem: Problem, n: int, *, seed: int = 0) -> list[Completion]:
        messages = ([{"role": "system", "content": self.cfg.system_prompt}] if self.cfg.system_prompt else [])
        messages.append({"role": "user", "content": problem.prompt})
        out: list[Completion] = []
        while len(out) < n:
            k = min(self.cfg.n_per_request, n - len(out))
            body = {"model": self.cfg.model, "messages": messages, "temperature": self.cfg.temperature,
                    "top_p": self.cfg.top_p, "max_tokens": self.cfg.max_tokens, "n": k,
                    "seed": seed + len(out), **self.cfg.extra_body}
            data = self._post(body)
            choices = data.get("choices") if isinstance(data, dict) else None
            if not isinstance(choices, list) or not choices:
                raise TeacherError(f"malformed response (no choices): {str(data)[:200]}")
            for choice in choices[:k]:
                msg = choice.get("message") if isinstance(choice, dict) else None
                if not isinstance(msg, dict):
                    raise TeacherError(f"malformed choice (no message): {str(choice)[:200]}")
                out.append(completion_from_message(msg, choice.get("finish_reason")))
        return out

    def _count(self, key: str):
        with self._lock:
            self.counters[key] += 1

    def _post(self, body: dict) -> dict:
        last_kind, last_msg = "error", ""
        for attempt in range(self.cfg.max_retries + 1):
            retry_after = None
            self._count("requests")
            try:
                with self._slots:
                    resp = self.client.post("/chat/completions", json=body)
            except httpx.TimeoutException as e:
                last_kind, last_msg = "timeout", f"timed out after {self.cfg.timeout_s}s ({type(e).__name__})"
            except httpx.TransportError as e:
                last_kind, last_msg = "error", f"{type(e).__name__}: {e}"
            else:
                if resp.status_code == 200:
                    try:
                        return resp.json()
                    except ValueError:
                        last_kind, last_msg = "error", f"response is not JSON: {resp.text[:200]!r}"
                elif resp.status_code in _RETRYABLE_STATUS or resp.status_code >= 500:
                    last_kind = "timeout" if resp.status_code in (408, 504) else "error"
                    last_msg = f"HTTP {resp.status_code}: {resp.text[:200]}"
                    retry_after = _retry_after(resp)
                else:  # a request problem (bad model name, auth): retrying will not help
                    self._count("failed_error")
                    raise TeacherError(f"HTTP {resp.status_code}: {resp.text[:300]}", "error")
            if attempt < self.cfg.max_retries:
                self._count("retries")
                time.sleep(self._backoff(attempt, retry_after))
        self._count(f"failed_{last_kind}")
        raise TeacherError(f"gave up after {self.cfg.max_retries + 1} attempts: {last_msg}", last_kind)

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self.cfg.backoff_max_s)
        cap = min(self.cfg.backoff_max_s, self.cfg.backoff_s * 2**attempt)
        return random.uniform(cap / 2, cap)  # jitter: concurrent callers do not retry in lockstep

    def close(self):
        self.client.close()


def _retry_after(resp: httpx.Response) -> float | None:
    try:
        return max(0.0, float(resp.headers.get("retry-after", "")))
    except ValueError:
        return None
