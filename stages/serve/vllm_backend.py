"""``backend: vllm``: serve the HF export with vLLM through ``ray.serve.llm`` (GPU clusters).

The export written by pretrain/distill is a standard ``DeepseekV3ForCausalLM`` folder with the
tokenizer files, which vLLM loads as is; the stage's settings map onto vLLM's:

    engine.max_seq_len        -> max_model_len
    engine.num_slots          -> max_num_seqs
    engine.max_num_batched_tokens -> max_num_batched_tokens (chunked prefill budget)
    engine.use_mtp            -> speculative_config {method: deepseek_mtp, num_speculative_tokens: 1}
    reasoning                 -> reasoning_parser deepseek_r1 (<think> ... </think>)
    vllm.*                    -> tensor/pipeline parallel size, GPU memory share, accelerator type,
                                 and engine_kwargs passed through (they win)

vLLM must be installed where the stage runs (``ray.serve.llm`` validates the config there) and on
the GPU nodes: ``pip install "ray[llm]"``. The tests never need it; the config is built lazily.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from stages.serve.config import ServeConfig
from stages.serve.deployment_options import serve_deployment_options
from stages.serve.server import ServeSetupError


def llm_config_kwargs(cfg: ServeConfig, model_source: str, model_name: str) -> dict[str, Any]:
    """Arguments of ``ray.serve.llm.LLMConfig`` (plain data; no vLLM needed to build them)."""
    v, e = cfg.vllm, cfg.engine
    engine_kwargs: dict[str, Any] = {
        "max_model_len": e.max_seq_len,
        "max_num_seqs": e.num_slots,
        "max_num_batched_tokens": e.max_num_batched_tokens,
        "enable_chunked_prefill": True,
        "tensor_parallel_size": v.tensor_parallel_size,
        "pipeline_parallel_size": v.pipeline_parallel_size,
        "gpu_memory_utilization": v.gpu_memory_utilization,
        "reasoning_parser": "deepseek_r1",
        "trust_remote_code": False,
    }
    if e.use_mtp:
        engine_kwargs["speculative_config"] = {"method": "deepseek_mtp", "num_speculative_tokens": 1}
    engine_kwargs.update(v.engine_kwargs)
    deployment = serve_deployment_options(cfg)
    deployment.pop("ray_actor_options", None)   # vLLM places its GPU workers itself
    kwargs: dict[str, Any] = {
        "model_loading_config": {"model_id": model_name, "model_source": v.model_source or model_source},
        "engine_kwargs": engine_kwargs,
        "deployment_config": deployment,
    }
    if v.accelerator_type:
        kwargs["accelerator_type"] = v.accelerator_type
    return kwargs


def build_vllm_app(cfg: ServeConfig, model_source: str, model_name: str):
    if cfg.auth.enabled:
        raise ServeSetupError("auth.enabled is implemented by the whale backend only; with backend: vllm put the "
                              "Serve proxy behind an authenticating gateway, or use backend: whale")
    if importlib.util.find_spec("vllm") is None:
        raise ServeSetupError("backend: vllm needs vLLM, which is not installed here: pip install \"ray[llm]\" "
                              "(on the GPU nodes and where the stage runs), or set serve.backend: whale")
    from ray.serve.llm import LLMConfig, build_openai_app

    return build_openai_app({"llm_configs": [LLMConfig(**llm_config_kwargs(cfg, model_source, model_name))]})
