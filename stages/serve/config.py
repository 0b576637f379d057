"""The serve stage's config section. Light on purpose (pydantic only).

    serve:
      model: null                 # null: models:/<pipeline name>@<alias>; or models:/NAME/VERSION,
      alias: champion             #   models:/NAME@ALIAS, runs:/RUN/PATH, or a local HF folder
      backend: whale              # whale (our engine, CPU or GPU) | vllm (ray.serve.llm, GPU clusters)
      engine: {num_slots: 16, max_seq_len: 1024, use_mtp: true}
      http: {host: 127.0.0.1, port: 8000}
      deployment: {num_replicas: 1, max_ongoing_requests: 64, num_cpus: 1}
      auth: {enabled: false, api_key_env: WHALE_API_KEY}
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from model.engine.config import EngineConfig
from pipeline.stage import StageConfig


class AutoscalingSection(StageConfig):
    """Ray Serve autoscaling on ongoing requests per replica (replaces num_replicas)."""

    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(2, ge=1)
    target_ongoing_requests: float = Field(16, gt=0)
    upscale_delay_s: float = Field(10, ge=0)
    downscale_delay_s: float = Field(300, ge=0)

    @model_validator(mode="after")
    def _ordered(self) -> "AutoscalingSection":
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"autoscaling.min_replicas ({self.min_replicas}) exceeds max_replicas "
                             f"({self.max_replicas})")
        return self


class DeploymentSection(StageConfig):
    """Ray Serve deployment options of the model server."""

    num_replicas: int = Field(1, ge=1)
    autoscaling: AutoscalingSection | None = None
    # requests one replica takes at once; the engine batches them (Serve's default, 5, starves it)
    max_ongoing_requests: int = Field(64, ge=1)
    # requests Serve queues in front of the replicas before answering 503; -1: unbounded
    max_queued_requests: int = Field(256, ge=-1)
    num_cpus: float = Field(1.0, ge=0)
    num_gpus: float = Field(0.0, ge=0)
    memory_gb: float | None = Field(None, gt=0)
    # intra-op threads per replica (replicas share the node's cores)
    torch_threads: int = Field(1, ge=1)
    health_check_period_s: float = Field(10.0, gt=0)
    health_check_timeout_s: float = Field(30.0, gt=0)
    # on shutdown/redeploy: how long running requests may finish before they are cut
    graceful_shutdown_wait_loop_s: float = Field(2.0, gt=0)
    graceful_shutdown_timeout_s: float = Field(20.0, gt=0)
    # fail the stage if the replicas are not all up by then (e.g. no free CPUs/GPUs to place them)
    deploy_timeout_s: float = Field(600.0, gt=0)
    # replica log level; INFO includes one access-log line per request
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


class HttpSection(StageConfig):
    # loopback by default; 0.0.0.0 to expose the proxy on a cluster
    host: str = Field("127.0.0.1", min_length=1)
    port: int = Field(8000, ge=1, le=65535)
    route_prefix: str = "/"
    # EveryNode: a proxy per node (put a load balancer in front); HeadOnly: one on the head node
    proxy_location: Literal["EveryNode", "HeadOnly"] = "EveryNode"
    # a generation running longer is cancelled and its slot freed (504, or an error event)
    request_timeout_s: float = Field(300.0, gt=0)
    # larger request bodies are refused with 413 before parsing
    max_request_bytes: int = Field(1 << 20, ge=1024)

    @field_validator("route_prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        if not v.startswith("/"):
            raise ValueError(f"route_prefix must start with '/', got {v!r}")
        return v.rstrip("/") or "/"


class AuthSection(StageConfig):
    """Bearer-token auth on /v1/*: the key comes from an environment variable or a secret file,
    read where the replica runs (mount the secret on the Ray pods)."""

    enabled: bool = False
    api_key_env: str = "WHALE_API_KEY"
    api_key_file: str | None = None


class SmokeTestSection(StageConfig):
    enabled: bool = True
    prompt: str = "Say hello."
    max_tokens: int = Field(16, ge=1)
    timeout_s: float = Field(120.0, gt=0)


class VllmSection(StageConfig):
    """``backend: vllm`` serves the HF export with vLLM through ``ray.serve.llm`` (GPU clusters;
    vLLM must be installed on the nodes)."""

    tensor_parallel_size: int = Field(1, ge=1)
    pipeline_parallel_size: int = Field(1, ge=1)
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1)
    accelerator_type: str | None = None          # e.g. H100, A100 (Ray accelerator label)
    # where GPU nodes read the model: null = the folder the stage downloaded (single node or a
    # shared filesystem); or an s3:// / gs:// URI of the same files
    model_source: str | None = None
    # passed to vLLM's engine as is (e.g. {enforce_eager: true, max_num_seqs: 128})
    engine_kwargs: dict[str, Any] = Field(default_factory=dict)


class ServeConfig(StageConfig):
    # what to serve; null: the registered model models:/<pipeline name>@<alias>
    model: str | None = None
    alias: str = Field("champion", pattern=r"^[A-Za-z0-9_-]+$")
    backend: Literal["whale", "vllm"] = "whale"
    app_name: str = Field("whale", pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
    # the model id clients send ("model": ...); null: the pipeline name
    served_model_name: str | None = None
    engine: EngineConfig = Field(default_factory=lambda: EngineConfig(num_slots=16, max_seq_len=1024))
    # chat completions without max_tokens generate at most this many (and never past the context)
    default_max_tokens: int = Field(512, ge=1)
    # completions per request (the OpenAI `n`) at most
    max_n: int = Field(8, ge=1)
    deployment: DeploymentSection = Field(default_factory=DeploymentSection)
    http: HttpSection = Field(default_factory=HttpSection)
    auth: AuthSection = Field(default_factory=AuthSection)
    smoke_test: SmokeTestSection = Field(default_factory=SmokeTestSection)
    vllm: VllmSection = Field(default_factory=VllmSection)

    @field_validator("model")
    @classmethod
    def _model_uri(cls, v: str | None) -> str | None:
        if v is None:
            return v
        v = v.strip()
        if not v:
            raise ValueError("model is empty; give models:/NAME@ALIAS, models:/NAME/VERSION, runs:/... or a path")
        if v.startswith("models:/"):
            rest = v.removeprefix("models:/")
            name, at, alias = rest.partition("@")
            if not name or (at and not alias) or (not at and "/" not in rest):
                raise ValueError(f"model {v!r}: expected models:/NAME@ALIAS or models:/NAME/VERSION")
        return v
