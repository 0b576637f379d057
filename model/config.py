"""ModelConfig: the DeepSeek-V3 architecture's hyper-parameters plus a few training-only knobs.

Field names are those of transformers' ``DeepseekV3Config`` (and the released ``config.json``),
so exporting a checkpoint is a renaming, not a translation. This module imports pydantic and
PyYAML only (no torch), so stage configs can embed a ``ModelConfig`` cheaply.

A config comes from a preset name, a YAML file, or a dict that may name a preset to start from::

    ModelConfig.load("tiny")                           # a preset
    ModelConfig.load("configs/my_model.yaml")          # a YAML file (may say `preset: tiny`)
    ModelConfig.load("tiny", vocab_size=8192)          # a preset plus overrides
    ModelConfig.model_validate({"preset": "small", "num_hidden_layers": 8})
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, model_validator

# Keys that HF writes into config.json but that say nothing about the architecture we build
# (bookkeeping, quantisation of a released checkpoint, runtime switches). ``from_hf_dict``
# drops them; any other unknown key is an error.
HF_BOOKKEEPING_KEYS = frozenset({
    "architectures", "auto_map", "transformers_version", "torch_dtype", "dtype", "model_type",
    "quantization_config", "use_cache", "pretraining_tp", "output_router_logits", "ep_size",
    "moe_layer_freq", "seq_aux", "aux_loss_alpha", "num_mtp_layers", "rope_interleave",
    "attention_dropout", "_name_or_path", "name_or_path", "output_attentions",
    "output_hidden_states", "return_dict", "head_dim", "qk_head_dim", "rope_parameters",
    "tie_word_embeddings", "attention_bias", "num_key_value_heads", "hidden_act",
    "scoring_func", "topk_method",
})


class RopeScaling(BaseModel):
    """YaRN context extension (arXiv 2309.00071) as DeepSeek-V3 configures it.

    Semantics follow transformers' ``_compute_yarn_parameters``: frequencies are blended between
    interpolation (``/factor``) and extrapolation over a ramp set by ``beta_fast``/``beta_slow``
    rotations at ``original_max_position_embeddings``; cos/sin are scaled by
    ``mscale(factor, mscale) / mscale(factor, mscale_all_dim)`` and the softmax scale by
    ``mscale(factor, mscale_all_dim)**2`` where ``mscale(s, m) = 0.1·m·ln(s) + 1``.

    ``mscale_all_dim`` unset (0) follows transformers too, which is NOT what DeepSeek's reference
    (inference/model.py) does: transformers then scales cos/sin by ``mscale(factor, 1)`` (the
    configured ``mscale`` is ignored) and leaves the softmax scale alone, so only the rotary part
    of each score (q_R·k_R, ``qk_rope_head_dim`` of the ``qk_head_dim`` dims) is multiplied by
    mscale²; DeepSeek's reference has no ``mscale_all_dim``, never scales cos/sin, and multiplies
    the whole softmax scale by ``mscale(factor, mscale)**2``. With V3's config (mscale =
    mscale_all_dim = 1) both give the same scores: cos/sin × 1, every dim × mscale(40, 1)².
    To reproduce DeepSeek's reference for a config that only has ``mscale``, set
    ``mscale_all_dim = mscale``. Whale keeps transformers' rule so exported checkpoints give the
    same logits under ``DeepseekV3ForCausalLM`` (tests/model/test_hf_checkpoint.py).
    """

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    type: Literal["yarn"] = Field("yarn", alias="rope_type")
    factor: float = Field(gt=1.0)
    original_max_position_embeddings: PositiveInt
    beta_fast: float = Field(32.0, gt=0)
    beta_slow: float = Field(1.0, gt=0)
    mscale: float = 1.0
    mscale_all_dim: float = 0.0
    attention_factor: float | None = None
    truncate: bool = True

    @model_validator(mode="before")
    @classmethod
    def _accept_both_type_keys(cls, data: Any) -> Any:
        # The released config says {"type": "yarn"}, HF 5 writes {"rope_type": "yarn"}, some both.
        if isinstance(data, Mapping) and "type" in data and "rope_type" in data:
            data = dict(data)
            if data["type"] != data["rope_type"]:
                raise ValueError(f"rope_scaling has type={data['type']!r} but rope_type={data['rope_type']!r}")
            data.pop("rope_type")
        return data

    def to_hf(self) -> dict[str, Any]:
        d = self.model_dump(exclude_none=True)
        d["rope_type"] = d["type"]
        return d


class ModelConfig(BaseModel):
    """DeepSeek-V3 hyper-parameters (HF ``DeepseekV3Config`` names) + training-only fields.

    Validated on construction: a bad shape fails here, with the field named, before any tensor
    is allocated.
    """

    model_config = ConfigDict(extra="forbid", protected_namespaces=(), validate_assignment=True)

    # -- vocabulary and width ---------------------------------------------------------------
    vocab_size: PositiveInt = 4096
    hidden_size: PositiveInt = 192
    num_hidden_layers: PositiveInt = 4
    max_position_embeddings: PositiveInt = 2048
    rms_norm_eps: float = Field(1e-6, gt=0)
    # -- Multi-head Latent Attention ----------------------------------------------------------
    num_attention_heads: PositiveInt = 4
    q_lora_rank: PositiveInt | None = 96       # None: full-rank q_proj (as DeepSeek-V2-Lite)
    kv_lora_rank: PositiveInt = 64
    qk_nope_head_dim: PositiveInt = 32
    qk_rope_head_dim: PositiveInt = 16
    v_head_dim: PositiveInt = 32
    rope_theta: float = Field(10000.0, gt=0)
    rope_scaling: RopeScaling | None = None
    # -- feed-forward / DeepSeekMoE -------------------------------------------------------------
    intermediate_size: PositiveInt = 512       # dense SwiGLU of the first_k_dense_replace layers
    moe_intermediate_size: PositiveInt = 128   # one routed (or shared) expert
    first_k_dense_replace: int = Field(1, ge=0)
    n_routed_experts: PositiveInt = 16
    n_shared_experts: int = Field(1, ge=0)
    num_experts_per_tok: PositiveInt = 4
    n_group: PositiveInt = 4
    topk_group: PositiveInt = 2
    routed_scaling_factor: float = Field(2.5, gt=0)
    norm_topk_prob: bool = True
    # -- multi-token prediction -----------------------------------------------------------------
    num_nextn_predict_layers: int = Field(1, ge=0)
    # -- initialisation and special tokens --------------------------------------------------------
    initializer_range: float = Field(0.006, gt=0)   # V3 §4.2: std 0.006 for every parameter
    bos_token_id: int | None = 0
    eos_token_id: int | list[int] | None = 1
    pad_token_id: int | None = None

    # -- training-only (ignored by inference, kept in config.json under the same names) -----------
    # γ in b_i += γ·sign(mean_load − load_i) (aux-loss-free balancing, V3 §2.1.2)
    router_bias_update_rate: float = Field(1e-3, ge=0)
    # α of the sequence-wise balance loss (V3 eq. 17-20); 0 disables it
    seq_aux_loss_alpha: float = Field(1e-4, ge=0)
    # λ weighting the MTP loss (V3 §2.2: 0.3 for the first 10T tokens, then 0.1)
    mtp_loss_weight: float = Field(0.3, ge=0)
    # DeepSeek-V2 device-level token dropping (V2 §2.2.4; model/moe.py): each device of the
    # expert-parallel group keeps at most ceil(cf · assignments in the group / ep) of the
    # assignments it receives, dropping its lowest-affinity ones beyond that. None: no dropping
    # (V3). One device (no EP) holds the average, so with cf >= 1 it drops nothing.
    expert_capacity_factor: float | None = Field(None, gt=0)
    # share of each micro-batch's sequences whose tokens are never dropped (V2: ~10 %)
    never_drop_share: float = Field(0.1, ge=0, le=1)
    # wrap each block in torch.utils.checkpoint: none | selective (recompute all but matmul and
    # attention outputs) | full (recompute the whole block)
    activation_checkpointing: Literal["none", "selective", "full"] = "none"

    # ------------------------------------------------------------------------------------------
    @model_validator(mode="before")
    @classmethod
    def _expand_preset(cls, data: Any) -> Any:
        """``"tiny"`` or ``{"preset": "tiny", ...overrides}`` -> the preset's fields + overrides."""
        if isinstance(data, str):
            data = {"preset": data}
        if isinstance(data, Mapping) and "preset" in data:
            data = dict(data)
            name = data.pop("preset")
            if name not in PRESETS:
                raise ValueError(f"unknown model preset {name!r}; known presets: {sorted(PRESETS)}")
            data = {**PRESETS[name], **data}
        return data

    @model_validator(mode="after")
    def _check_shapes(self) -> "ModelConfig":
        errors = []
        E, G = self.n_routed_experts, self.n_group
        if E % G:
            errors.append(f"n_routed_experts ({E}) must be divisible by n_group ({G})")
        elif E // G < 2:
            errors.append(f"each expert group needs >= 2 experts (a group's score is the sum of its top-2 "
                          f"affinities); got n_routed_experts={E}, n_group={G}")
        if self.topk_group > G:
            errors.append(f"topk_group ({self.topk_group}) must be <= n_group ({G})")
        if not errors and self.num_experts_per_tok > self.topk_group * (E // G):
            errors.append(f"num_experts_per_tok ({self.num_experts_per_tok}) exceeds the experts reachable in "
                          f"topk_group={self.topk_group} groups of {E // G}")
        if self.first_k_dense_replace > self.num_hidden_layers:
            errors.append(f"first_k_dense_replace ({self.first_k_dense_replace}) must be <= "
                          f"num_hidden_layers ({self.num_hidden_layers})")
        if self.qk_rope_head_dim % 2:
            errors.append(f"qk_rope_head_dim ({self.qk_rope_head_dim}) must be even (RoPE rotates pairs)")
        for name in ("bos_token_id", "pad_token_id"):
            tid = getattr(self, name)
            if tid is not None and not 0 <= tid < self.vocab_size:
                errors.append(f"{name} ({tid}) is outside the vocabulary [0, {self.vocab_size})")
        for tid in self.eos_token_ids:
            if not 0 <= tid < self.vocab_size:
                errors.append(f"eos_token_id ({tid}) is outside the vocabulary [0, {self.vocab_size})")
        rs = self.rope_scaling
        if rs is not None and rs.original_max_position_embeddings > self.max_position_embeddings:
            errors.append(f"rope_scaling.original_max_position_embeddings ({rs.original_max_position_embeddings}) "
                          f"exceeds max_position_embeddings ({self.max_position_embeddings})")
        if errors:
            raise ValueError("invalid model config: " + "; ".join(errors))
        return self

    # -- derived quantities ---------------------------------------------------------------------
    @property
    def qk_head_dim(self) -> int:
        return self.qk_nope_head_dim + self.qk_rope_head_dim

    @property
    def eos_token_ids(self) -> list[int]:
        e = self.eos_token_id
        return [] if e is None else [e] if isinstance(e, int) else list(e)

    def is_moe_layer(self, layer_idx: int) -> bool:
        """Layers from ``first_k_dense_replace`` on (MTP layers included) use DeepSeekMoE."""
        return layer_idx >= self.first_k_dense_replace

    @property
    def softmax_scale(self) -> float:
        """1/sqrt(d_qk), times mscale(factor, mscale_all_dim)^2 under YaRN (V3's config)."""
        scale = self.qk_head_dim ** -0.5
        rs = self.rope_scaling
        if rs is not None and rs.mscale_all_dim:
            m = yarn_mscale(rs.factor, rs.mscale_all_dim)
            scale *= m * m
        return scale

    # -- loading --------------------------------------------------------------------------------
    @classmethod
    def load(cls, preset_or_path: str | Path, **overrides: Any) -> "ModelConfig":
        """A preset name (``tiny``, ``small``, ``deepseek-v3-671b``), a YAML file, or a HF
        ``config.json`` (file or the folder holding it), then ``overrides`` on top."""
        src = str(preset_or_path)
        if src in PRESETS:
            return cls.model_validate({"preset": src, **overrides})
        path = Path(src)
        if path.is_dir() and (path / "config.json").is_file():
            path = path / "config.json"
        if not path.is_file():
            raise ValueError(f"{src!r} is neither a model preset ({', '.join(sorted(PRESETS))}) nor a file")
        if path.suffix == ".json":
            import json

            return cls.from_hf_dict({**json.loads(path.read_text()), **overrides})
        data = yaml.safe_load(path.read_text()) or {}
        if not isinstance(data, Mapping):
            raise ValueError(f"{path}: expected a mapping of model fields, got {type(data).__name__}")
        return cls.model_validate({**data, **overrides})

    @classmethod
    def from_hf_dict(cls, d: Mapping[str, Any]) -> "ModelConfig":
        """From a HF ``config.json`` dict (ours or DeepSeek's release): drops bookkeeping keys,
        checks that the architecture switches we do not implement have the values we do."""
        d = dict(d)
        if d.get("model_type", "deepseek_v3") != "deepseek_v3":
            raise ValueError(f"config.json has model_type={d['model_type']!r}, expected 'deepseek_v3'")
        checks = {"hidden_act": "silu", "scoring_func": "sigmoid", "topk_method": "noaux_tc",
                  "tie_word_embeddings": False, "attention_bias": False, "moe_layer_freq": 1}
        for key, want in checks.items():
            if key in d and d[key] != want:
                raise ValueError(f"config.json has {key}={d[key]!r}; this implementation supports only {want!r}")
        if "num_nextn_predict_layers" not in d and "num_mtp_layers" in d:   # HF 5's alias
            d["num_nextn_predict_layers"] = d["num_mtp_layers"]
        kvh = d.get("num_key_value_heads")
        if kvh is not None and kvh != d.get("num_attention_heads", kvh):
            raise ValueError("MLA needs num_key_value_heads == num_attention_heads")
        if d.get("rope_scaling") is None and isinstance(d.get("rope_parameters"), Mapping):
            rp = dict(d["rope_parameters"])   # HF 5 style: theta lives inside rope_parameters
            d.setdefault("rope_theta", rp.pop("rope_theta", 10000.0))
            if rp.get("rope_type", rp.get("type", "default")) != "default":
                d["rope_scaling"] = rp
        if isinstance(d.get("rope_scaling"), Mapping):
            rs = dict(d["rope_scaling"])
            rs.pop("rope_theta", None)
            if rs.get("rope_type", rs.get("type")) == "default":
                rs = None
            d["rope_scaling"] = rs
        data = {k: v for k, v in d.items() if k not in HF_BOOKKEEPING_KEYS}
        return cls.model_validate(data)

    def to_hf_dict(self) -> dict[str, Any]:
        """``config.json`` content loadable by ``transformers.AutoConfig`` (model_type deepseek_v3)."""
        d = self.model_dump(mode="json")
        d["rope_scaling"] = self.rope_scaling.to_hf() if self.rope_scaling else None
        d.update({
            "architectures": ["DeepseekV3ForCausalLM"],
            "model_type": "deepseek_v3",
            "num_key_value_heads": self.num_attention_heads,
            "hidden_act": "silu",
            "scoring_func": "sigmoid",
            "topk_method": "noaux_tc",
            "tie_word_embeddings": False,
            "attention_bias": False,
            "attention_dropout": 0.0,
            "rope_interleave": True,
            "moe_layer_freq": 1,
            "torch_dtype": "float32",
        })
        return d


def yarn_mscale(scale: float, mscale: float = 1.0) -> float:
    """YaRN's attention temperature correction 0.1·m·ln(s) + 1 (1 when s <= 1)."""
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


# ------------------------------------------------------------------------------------------------
# Presets. Each is a plain dict of fields so `{"preset": ..., **overrides}` composes.

PRESETS: dict[str, dict[str, Any]] = {
    # Trains on 2 CPU cores in minutes; group-limited routing is on so every code path runs.
    "tiny": dict(
        vocab_size=4096, hidden_size=192, num_hidden_layers=4, max_position_embeddings=2048,
        num_attention_heads=4, q_lora_rank=96, kv_lora_rank=64,
        qk_nope_head_dim=32, qk_rope_head_dim=16, v_head_dim=32,
        intermediate_size=512, moe_intermediate_size=128, first_k_dense_replace=1,
        n_routed_experts=16, n_shared_experts=1, num_experts_per_tok=4, n_group=4, topk_group=2,
        routed_scaling_factor=2.5, num_nextn_predict_layers=1,
    ),
    # ~0.9B total / ~0.2B activated: one GPU.
    "small": dict(
        vocab_size=32768, hidden_size=1024, num_hidden_layers=12, max_position_embeddings=4096,
        num_attention_heads=16, q_lora_rank=384, kv_lora_rank=256,
        qk_nope_head_dim=64, qk_rope_head_dim=32, v_head_dim=64,
        intermediate_size=2816, moe_intermediate_size=352, first_k_dense_replace=1,
        n_routed_experts=64, n_shared_experts=2, num_experts_per_tok=6, n_group=8, topk_group=4,
        routed_scaling_factor=2.5, num_nextn_predict_layers=1,
    ),
    # The released DeepSeek-V3 (inference/configs/config_671B.json, HF config.json).
    "deepseek-v3-671b": dict(
        vocab_size=129280, hidden_size=7168, num_hidden_layers=61, max_position_embeddings=163840,
        rms_norm_eps=1e-6, num_attention_heads=128, q_lora_rank=1536, kv_lora_rank=512,
        qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128, rope_theta=10000.0,
        rope_scaling=dict(type="yarn", factor=40, original_max_position_embeddings=4096,
                          beta_fast=32, beta_slow=1, mscale=1.0, mscale_all_dim=1.0),
        intermediate_size=18432, moe_intermediate_size=2048, first_k_dense_replace=3,
        n_routed_experts=256, n_shared_experts=1, num_experts_per_tok=8, n_group=8, topk_group=4,
        routed_scaling_factor=2.5, norm_topk_prob=True, num_nextn_predict_layers=1,
        bos_token_id=0, eos_token_id=1,
    ),
}
