"""Fixtures for the serve tests: a tokenizer trained in seconds, a tiny DeepSeek-V3 taught one
chat reply (with reasoning), saved as the HF folder pretrain/distill write, and helpers to deploy
it on the session's Ray."""

from __future__ import annotations

import socket

import pytest
import torch


@pytest.fixture(scope="session")
def serve_tokenizer():
    from tests.serve.helpers import train_tokenizer

    return train_tokenizer()


@pytest.fixture(scope="session")
def chat_model_dir(serve_tokenizer, tmp_path_factory):
    """HF folder (checkpoint + tokenizer) of a tiny model that answers every user message with
    <think>REPLY_REASONING</think> REPLY_ANSWER."""
    from model import DeepSeekV3, ModelConfig
    from tests.serve.helpers import TINY_MODEL, train_chat_model

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        tok = serve_tokenizer
        torch.manual_seed(0)
        config = ModelConfig.model_validate({**TINY_MODEL, "vocab_size": tok.vocab_size,
                                             "bos_token_id": tok.bos_id, "eos_token_id": tok.eos_id})
        model = train_chat_model(DeepSeekV3(config), tok)
        path = tmp_path_factory.mktemp("chat_model")
        model.save_pretrained(path)
        tok.save(path)
    finally:
        torch.set_num_threads(threads)
    return path


@pytest.fixture
def single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(1234)
    yield
    torch.set_num_threads(threads)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def deploy_for_test(model_dir, *, app_name: str, engine: dict, auth: dict | None = None,
                    request_timeout_s: float = 60.0, max_request_bytes: int = 1 << 20) -> str:
    """Deploy the model folder on Ray Serve (the stage's own deploy path) on a free loopback port;
    returns the base URL. The caller shuts Serve down (``serve.shutdown()``)."""
    from stages.serve.config import ServeConfig
    from stages.serve.deploy import deploy_app, endpoint_url, start_serve
    from stages.serve.deployment import build_whale_app
    from stages.serve.server import ServerSpec

    cfg = ServeConfig.model_validate({
        "model": str(model_dir), "app_name": app_name, "engine": engine,
        "http": {"port": free_port(), "request_timeout_s": request_timeout_s, "max_request_bytes": max_request_bytes},
        "auth": auth or {}, "deployment": {"num_cpus": 1, "deploy_timeout_s": 180, "log_level": "WARNING"},
    })
    host, port = start_serve(cfg.http)
    spec = ServerSpec.from_config(cfg, model_uri=str(model_dir), local_path=str(model_dir), tracking_uri=None,
                                  model_name="tiny-chat")
    deploy_app(build_whale_app(cfg, spec), cfg)
    return endpoint_url(host, port, cfg.http.route_prefix)
