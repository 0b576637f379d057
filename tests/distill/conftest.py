"""A real OpenAI-compatible HTTP server on 127.0.0.1 (http.server, no mocks), for the teacher tests.

The requested ``model`` name picks the behaviour:
    reasoning_content | reasoning | inline | inline-open-missing   the three reasoning styles (+ R1's)
    wrong            correct format, wrong answers
    flaky            503 for the first 2 requests, then answers
    ratelimit        429 with Retry-After: 0 once, then answers
    down             always 500
    slow             sleeps 2 s before answering (clients use a shorter timeout)
    bad-request      400 (not retried)
    garbage          200 with a body that is not JSON
    auth             401 unless "Authorization: Bearer letmein"
It answers "What is a op b?" prompts with the right result (or off by one for ``wrong``).
"""

from __future__ import annotations

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

_Q = re.compile(r"What is (\d+) ([+\-*]) (\d+)\?")


def _answer(prompt: str, wrong: bool) -> tuple[str, str]:
    m = _Q.search(prompt)
    if not m:
        return "I do not know this one.", "\\boxed{0}"
    a, op, b = int(m.group(1)), m.group(2), int(m.group(3))
    r = {"+": a + b, "-": a - b, "*": a * b}[op] + (1 if wrong else 0)
    return f"Compute {a} {op} {b} step by step.\nResult: {r}.", f"{a} {op} {b} = \\boxed{{{r}}}"


class FakeOpenAI:
    def __init__(self):
        self.requests: list[dict] = []
        self.counts: dict[str, int] = {}
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                pass

            def _send(self, status: int, body, headers: dict | None = None):
                raw = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(raw)

            def do_POST(self):
                if self.path != "/v1/chat/completions":
                    return self._send(404, {"error": "not found"})
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                model = body["model"]
                with server.lock:
                    server.requests.append({"body": body, "auth": self.headers.get("Authorization")})
                    server.counts[model] = server.counts.get(model, 0) + 1
                    count = server.counts[model]
                if model == "down":
                    return self._send(500, {"error": "boom"})
                if model == "flaky" and count <= 2:
                    return self._send(503, {"error": "warming up"})
                if model == "ratelimit" and count == 1:
                    return self._send(429, {"error": "slow down"}, {"Retry-After": "0"})
                if model == "bad-request":
                    return self._send(400, {"error": "unknown model"})
                if model == "garbage":
                    return self._send(200, b"<html>not json</html>")
                if model == "auth" and self.headers.get("Authorization") != "Bearer letmein":
                    return self._send(401, {"error": "unauthorized"})
                if model == "slow":
                    time.sleep(2)
                prompt = body["messages"][-1]["content"]
                choices = []
                for i in range(body.get("n", 1)):
                    reasoning, answer = _answer(prompt, wrong=model == "wrong")
                    if model == "reasoning":
                        msg = {"role": "assistant", "reasoning": reasoning, "content": answer}
                    elif model == "inline":
                        msg = {"role": "assistant", "content": f"<think>\n{reasoning}\n</think>\n\n{answer}"}
                    elif model == "inline-open-missing":
                        msg = {"role": "assistant", "content": f"{reasoning}\n</think>\n\n{answer}"}
                    else:
                        msg = {"role": "assistant", "reasoning_content": reasoning, "content": answer}
                    choices.append({"index": i, "message": msg, "finish_reason": "stop"})
                try:
                    self._send(200, {"id": "x", "object": "chat.completion", "model": model, "choices": choices})
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout tests)
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def openai_server():
    with FakeOpenAI() as server:
        yield server
