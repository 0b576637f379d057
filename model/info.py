"""Parameter, activation and KV-cache accounting, counted from the real module tree on meta.

Counting from the modules themselves (not from formulas) means the numbers describe exactly
what ``DeepSeekV3(config)`` builds; the meta device makes the 671B model cost no memory.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from model.config import ModelConfig


@dataclass
class ModelInfo:
    total_params: int              # main model (embedding, layers, norm, head), no MTP
    activated_params: int          # per token: all but the unselected routed experts
    activated_params_no_embedding: int
    embedding_params: int
    routed_expert_params: int      # all routed experts of the main model
    mtp_params: int                # unique MTP parameters (embedding and head are shared)
    mtp_params_on_disk: int        # + the copies of embedding and head the checkpoint stores
    checkpoint_params: int         # what save_pretrained writes: total + mtp on disk
    attention_params_per_layer: int
    params_per_routed_expert: int
    kv_cache_bytes_per_token: int  # MLA latent cache, all layers, at kv_dtype
    mha_kv_cache_bytes_per_token: int  # MHA with the same heads and head dims
    kv_dtype: str
    train_flops_per_token: float   # main model: 6·N_activated(matmul) + attention, at seq_len
    mtp_train_flops_per_token: float   # what the MTP modules add in training
    seq_len: int

    def as_dict(self) -> dict:
        return asdict(self)


def model_info(config: ModelConfig, *, kv_dtype: torch.dtype = torch.bfloat16,
               seq_len: int | None = None) -> ModelInfo:
    from model.transformer import DeepSeekV3

    with torch.device("meta"):
        model = DeepSeekV3(config)
    L, K, E = config.num_hidden_layers, config.num_experts_per_tok, config.n_routed_experts

    def count(module) -> int:
        return sum(p.numel() for p in module.parameters())

    mtp = count(model.mtp)
    total = count(model) - mtp
    embedding = count(model.embed_tokens)
    head = count(model.lm_head)
    routed = sum(count(moe.experts) for lid, moe in model.moe_layers().items() if lid < L)
    activated = total - routed + routed * K // E
    per_expert = count(next(iter(model.moe_layers().values())).experts["0"]) if model.moe_layers() else 0

    bytes_per = torch.empty((), dtype=kv_dtype).element_size()
    mla_kv = L * (config.kv_lora_rank + config.qk_rope_head_dim) * bytes_per
    mha_kv = L * config.num_attention_heads * (config.qk_head_dim + config.v_head_dim) * bytes_per

    T = seq_len or min(config.max_position_embeddings, 4096)
    # Training FLOPs per token: 6 per activated matmul weight (the embedding is a lookup) plus
    # attention scores and weighted values, 2·H·(d_qk + d_v) per context token in the forward,
    # an average context of T/2 under the causal mask, ×3 for forward + backward.
    attn_per_layer = 3 * 2 * config.num_attention_heads * (config.qk_head_dim + config.v_head_dim) * T / 2
    flops = 6 * (activated - embedding) + L * attn_per_layer
    mtp_routed = sum(count(moe.experts) for lid, moe in model.moe_layers().items() if lid >= L)
    mtp_activated = mtp - mtp_routed + mtp_routed * K // E + head   # the shared head runs again
    mtp_flops = 6 * mtp_activated + len(model.mtp) * attn_per_layer
    return ModelInfo(
        total_params=total, activated_params=activated,
        activated_params_no_embedding=activated - embedding, embedding_params=embedding,
        routed_expert_params=routed, mtp_params=mtp, mtp_params_on_disk=mtp + embedding + head,
        checkpoint_params=total + mtp + embedding + head,
        attention_params_per_layer=count(model.layers["0"].self_attn),
        params_per_routed_expert=per_expert,
        kv_cache_bytes_per_token=mla_kv, mha_kv_cache_bytes_per_token=mha_kv,
        kv_dtype=str(kv_dtype).removeprefix("torch."), train_flops_per_token=flops,
        mtp_train_flops_per_token=mtp_flops, seq_len=T)


def format_info(name: str, info: ModelInfo) -> str:
    def b(n: float) -> str:
        return f"{n / 1e9:.2f}B" if n >= 1e8 else f"{n / 1e6:.2f}M"

    ratio = info.kv_cache_bytes_per_token / info.mha_kv_cache_bytes_per_token
    return "\n".join([
        f"model: {name}",
        f"  total parameters (main model):   {b(info.total_params)} ({info.total_params:,})",
        f"  activated per token:             {b(info.activated_params)} "
        f"({b(info.activated_params_no_embedding)} without the embedding)",
        f"  MTP module:                      {b(info.mtp_params)} unique, "
        f"{b(info.mtp_params_on_disk)} on disk with its embedding/head copies",
        f"  checkpoint total:                {b(info.checkpoint_params)}",
        f"  attention per layer:             {b(info.attention_params_per_layer)}; "
        f"one routed expert: {b(info.params_per_routed_expert)}",
        f"  KV cache per token ({info.kv_dtype}):    {info.kv_cache_bytes_per_token:,} B (MLA latent) vs "
        f"{info.mha_kv_cache_bytes_per_token:,} B (MHA, same shape) = {100 * ratio:.2f}%",
        f"  training FLOPs per token @ {info.seq_len}:  {info.train_flops_per_token:.3e}",
    ])
