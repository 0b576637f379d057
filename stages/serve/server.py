"""Everything a replica needs to come up, without Ray: the spec the stage hands it, the model
folder, the API key, and the assembled OpenAI server (engine + tokenizer + HTTP app)."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from stages.serve.config import AuthSection, ServeConfig


class ServeSetupError(RuntimeError):
    """The server cannot start (model missing, key missing, ...); the message says what to fix."""


@dataclass
class ServerSpec:
    """What the stage hands every replica (picklable, no secrets: the API key is read where the
    replica runs)."""

    model_uri: str                     # pinned: models:/NAME/VERSION, runs:/..., or a path
    local_path: str | None             # the stage's download; used when this node can see it
    tracking_uri: str | None
    model_name: str                    # the id clients send
    engine: dict[str, Any]
    default_max_tokens: int = 512
    max_n: int = 8
    max_request_bytes: int = 1 << 20
    request_timeout_s: float = 300.0
    auth: dict[str, Any] = field(default_factory=lambda: AuthSection().model_dump())
    torch_threads: int = 1
    device: str = "cpu"
    drain_timeout_s: float = 5.0

    @classmethod
    def from_config(cls, cfg: ServeConfig, *, model_uri: str, local_path: str | None, tracking_uri: str | None,
                    model_name: str) -> "ServerSpec":
        return cls(model_uri=model_uri, local_path=local_path, tracking_uri=tracking_uri, model_name=model_name,
                   engine=cfg.engine.model_dump(), default_max_tokens=cfg.default_max_tokens, max_n=cfg.max_n,
                   max_request_bytes=cfg.http.max_request_bytes, request_timeout_s=cfg.http.request_timeout_s,
                   auth=cfg.auth.model_dump(), torch_threads=cfg.deployment.torch_threads,
                   device="cuda" if cfg.deployment.num_gpus > 0 else "cpu",
                   drain_timeout_s=cfg.deployment.graceful_shutdown_timeout_s)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_model_dir(path: Path) -> Path:
    """A servable folder has the HF checkpoint and the tokenizer (as pretrain/distill write <out>/hf)."""
    if not path.is_dir():
        raise ServeSetupError(f"model folder {path} does not exist")
    missing = [f for f in ("config.json", "tokenizer.model") if not (path / f).is_file()]
    if not any(path.glob("*.safetensors")):
        missing.append("*.safetensors")
    if missing:
        raise ServeSetupError(f"{path} is not a servable model folder: {', '.join(missing)} missing (expected "
                              f"the HF export with tokenizer files that pretrain/distill write to <out>/hf)")
    return path


def model_dir_for_replica(spec: ServerSpec) -> Path:
    """The stage's download when this node sees it, else a fresh download of the pinned URI."""
    if spec.local_path and (Path(spec.local_path) / "config.json").is_file():
        return check_model_dir(Path(spec.local_path))
    from stages.serve.model_source import MLFLOW_SCHEMES, download

    if not spec.model_uri.startswith(MLFLOW_SCHEMES):
        return check_model_dir(Path(spec.model_uri))
    import tempfile

    return check_model_dir(download(spec.model_uri, spec.tracking_uri, Path(tempfile.mkdtemp(prefix="whale-model-"))))


def resolve_api_key(auth: AuthSection) -> str | None:
    """The Bearer key from the secret file or the environment; None when auth is off."""
    if not auth.enabled:
        return None
    if auth.api_key_file:
        p = Path(auth.api_key_file)
        if not p.is_file():
            raise ServeSetupError(f"auth is enabled but the API key file {p} does not exist on this node")
        key = p.read_text().strip()
        where = str(p)
    else:
        key = os.environ.get(auth.api_key_env, "").strip()
        where = f"${auth.api_key_env}"
    if not key:
        raise ServeSetupError(f"auth is enabled but no API key is set ({where} is empty or unset); set it, or "
                              f"give auth.api_key_file, or disable auth")
    return key


def build_openai_server(spec: ServerSpec, metrics=None):
    """Load the model and tokenizer and assemble the engine and the HTTP app (no Ray)."""
    import torch

    from model import DeepSeekV3
    from model.engine import AsyncEngine, Engine, EngineConfig
    from stages.serve.openai_app import OpenAIServer, ServerSettings
    from tokenizer import Tokenizer

    torch.set_num_threads(spec.torch_threads)
    api_key = resolve_api_key(AuthSection.model_validate(spec.auth))
    path = model_dir_for_replica(spec)
    tok = Tokenizer.load(path)
    model = DeepSeekV3.from_pretrained(path, device=spec.device).eval()
    if tok.vocab_size > model.config.vocab_size:
        raise ServeSetupError(f"{path}: the tokenizer has {tok.vocab_size} ids but the model only "
                              f"{model.config.vocab_size} embedding rows")
    engine = Engine(model, EngineConfig.model_validate(spec.engine), eos_token_ids=[tok.eos_id])
    settings = ServerSettings(model_name=spec.model_name, model_uri=spec.model_uri,
                              max_request_bytes=spec.max_request_bytes, request_timeout_s=spec.request_timeout_s,
                              default_max_tokens=spec.default_max_tokens, max_n=spec.max_n, api_key=api_key)
    return OpenAIServer(AsyncEngine(engine), tok, settings, metrics)
