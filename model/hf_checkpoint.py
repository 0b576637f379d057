"""Hugging Face checkpoint layout: what ``transformers`` and vLLM read for DeepSeek-V3.

    config.json              model_type "deepseek_v3", DeepseekV3Config field names
    model.safetensors        (or model-0000i-of-0000n.safetensors + model.safetensors.index.json)
    generation_config.json   bos/eos and default sampling

Names: ``model.embed_tokens.weight``, ``model.layers.<i>.self_attn.kv_b_proj.weight``,
``model.layers.<i>.mlp.experts.<e>.gate_proj.weight``, ``model.layers.<i>.mlp.gate.weight``,
``model.layers.<i>.mlp.gate.e_score_correction_bias`` (kept FP32), ``model.norm.weight``,
``lm_head.weight``. MTP module k is layer ``num_hidden_layers + k`` with its block weights directly
under it plus ``enorm``, ``hnorm``, ``eh_proj``, ``shared_head.norm`` and — as in the released
checkpoint — copies of the shared ``embed_tokens`` and ``shared_head.head`` weights.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from model.config import ModelConfig

if TYPE_CHECKING:
    from model.transformer import DeepSeekV3

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
# DeepSeek's recommended sampling for its chat models (R1/V3 evaluation: T 0.6, top-p 0.95)
DEFAULT_GENERATION = {"do_sample": True, "temperature": 0.6, "top_p": 0.95}
_MTP_LOCAL = ("enorm.", "hnorm.", "eh_proj.", "shared_head.")


def to_hf_name(name: str, num_hidden_layers: int) -> str:
    """Internal parameter name -> checkpoint name."""
    if name.startswith("lm_head."):
        return name
    m = re.match(r"mtp\.(\d+)\.(.*)", name)
    if m:
        layer, rest = num_hidden_layers + int(m.group(1)), m.group(2)
        rest = rest.removeprefix("block.")
        return f"model.layers.{layer}.{rest}"
    return f"model.{name}"


def from_hf_name(name: str, num_hidden_layers: int) -> str | None:
    """Checkpoint name -> internal name; None for the MTP copies of shared weights."""
    if name.startswith("lm_head."):
        return name
    name = name.removeprefix("model.")
    m = re.match(r"layers\.(\d+)\.(.*)", name)
    if m and int(m.group(1)) >= num_hidden_layers:
        k, rest = int(m.group(1)) - num_hidden_layers, m.group(2)
        if rest.startswith(("embed_tokens.", "shared_head.head.")):
            return None
        return f"mtp.{k}.{rest}" if rest.startswith(_MTP_LOCAL) else f"mtp.{k}.block.{rest}"
    return name


def hf_state_dict(model: "DeepSeekV3", dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """The model's weights under checkpoint names (contiguous, unshared tensors)."""
    L = model.config.num_hidden_layers
    out: dict[str, torch.Tensor] = {}
    for name, t in model.state_dict().items():
        if dtype is not None and t.is_floating_point() and not name.endswith("e_score_correction_bias"):
            t = t.to(dtype)
        out[to_hf_name(name, L)] = t.detach().contiguous()
    for k in range(len(model.mtp)):
        out[f"model.layers.{L + k}.embed_tokens.weight"] = out["model.embed_tokens.weight"].clone()
        out[f"model.layers.{L + k}.shared_head.head.weight"] = out["lm_head.weight"].clone()
    return out


def save_pretrained(model: "DeepSeekV3", path: str | Path, *, dtype: torch.dtype | None = None,
                    generation_config: dict[str, Any] | None = None,
                    max_shard_bytes: int = 4 * 1024**3) -> Path:
    """Write ``path`` in the HF layout. ``dtype`` casts weights (the routing bias stays FP32)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = hf_state_dict(model, dtype)
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, t in state.items():
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += nbytes
    meta = {"format": "pt"}
    if len(shards) == 1:
        save_file(shards[0], path / SINGLE_FILE, metadata=meta)
    else:
        weight_map = {}
        for i, shard in enumerate(shards, start=1):
            fname = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
            save_file(shard, path / fname, metadata=meta)
            weight_map.update({n: fname for n in shard})
        total = sum(t.numel() * t.element_size() for t in state.values())
        (path / INDEX_FILE).write_text(json.dumps(
            {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))

    cfg = model.config.to_hf_dict()
    weights_dtype = dtype or next(model.parameters()).dtype
    cfg["torch_dtype"] = str(weights_dtype).removeprefix("torch.")
    (path / "config.json").write_text(json.dumps(cfg, indent=2))
    gen = {"bos_token_id": model.config.bos_token_id, "eos_token_id": model.config.eos_token_id,
           **DEFAULT_GENERATION, **(generation_config or {})}
    if model.config.pad_token_id is not None:
        gen.setdefault("pad_token_id", model.config.pad_token_id)
    (path / "generation_config.json").write_text(json.dumps(gen, indent=2))
    return path


def read_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a single-file or sharded safetensors checkpoint folder."""
    path = Path(path)
    if (path / INDEX_FILE).is_file():
        files = sorted(set(json.loads((path / INDEX_FILE).read_text())["weight_map"].values()))
    elif (path / SINGLE_FILE).is_file():
        files = [SINGLE_FILE]
    else:
        raise FileNotFoundError(f"{path}: no {SINGLE_FILE} or {INDEX_FILE}")
    out = {}
    for fname in files:
        with safe_open(str(path / fname), framework="pt") as f:
            for k in f.keys():
                out[k] = f.get_tensor(k)
    return out


def _unfuse_experts(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers 5 may save experts fused ([E, 2I, D] gate_up_proj, [E, D, I] down_proj):
    split them into DeepSeek's per-expert tensors."""
    for name in [n for n in state if n.endswith("mlp.experts.gate_up_proj")]:
        prefix = name.removesuffix("gate_up_proj")
        gate_up, down = state.pop(name), state.pop(prefix + "down_proj")
        gate, up = gate_up.chunk(2, dim=1)
        for e in range(gate_up.shape[0]):
            state[f"{prefix}{e}.gate_proj.weight"] = gate[e]
            state[f"{prefix}{e}.up_proj.weight"] = up[e]
            state[f"{prefix}{e}.down_proj.weight"] = down[e]
    return state


def load_pretrained(cls: type["DeepSeekV3"], path: str | Path, *, device: torch.device | str = "cpu",
                    dtype: torch.dtype | None = None, strict: bool = True,
                    **config_overrides: Any) -> "DeepSeekV3":
    """Build the model from ``path/config.json`` (plus training-field overrides) and load its
    weights. Missing or unexpected tensors are an error naming them (``strict=False``: missing
    ones keep their fresh initialisation)."""
    path = Path(path)
    config = ModelConfig.load(path / "config.json", **config_overrides)
    L = config.num_hidden_layers
    state = {}
    for name, t in _unfuse_experts(read_checkpoint(path)).items():
        internal = from_hf_name(name, L)
        if internal is not None:
            state[internal] = t

    with torch.device("meta"):
        model = cls(config)
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if unexpected or (missing and strict):
        raise ValueError(f"{path}: checkpoint does not match its config.json: "
                         f"missing {len(missing)} {missing[:5]}, unexpected {len(unexpected)} {unexpected[:5]}")
    if missing:
        model.to_empty(device=device)
        model.init_weights()
        model.load_state_dict(state, strict=False)
    else:
        model.load_state_dict(state, assign=True)
        model.init_buffers(device="cpu")
    return model.to(device=device, dtype=dtype)
