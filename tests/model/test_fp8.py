"""DeepSeek-V3 FP8 recipe (model/fp8): quantisation bounds, the promoted GEMM, the FP8 linear's
three GEMMs, module conversion and a short training run against BF16. All on CPU, seconds."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from model.fp8 import (
    BLOCK,
    E4M3,
    E4M3_MAX,
    TILE,
    Float8Linear,
    ScaledFp8,
    convert_to_fp8,
    fp8_gemm,
    fp8_linear,
    precision_autocast,
    prepare_model,
    quantization_error_bound,
    quantize_blocks,
    quantize_tiles,
    resolve_backend,
)
from model.fp8.gemm import blockwise_unsupported_reason


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """Relative Frobenius error of a against reference b, in float64."""
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm()).item()


def _varied(rows: int, cols: int, seed: int = 0) -> torch.Tensor:
    """Normal data whose magnitude varies by orders of magnitude across rows and columns, so one
    scale per tensor would be a poor fit and per-tile scales matter."""
    g = torch.Generator().manual_seed(seed)
    row_scale = 10 ** (4 * torch.rand(rows, 1, generator=g) - 2)
    col_scale = 10 ** (2 * torch.rand(1, cols, generator=g) - 1)
    return torch.randn(rows, cols, generator=g) * row_scale * col_scale


# ---------------------------------------------------------------- quantisation


@pytest.mark.parametrize("block,shape,scale_shape", [
    (TILE, (7, 300), (7, 3)),         # ragged last tile (300 = 2·128 + 44)
    (TILE, (4, 256), (4, 2)),
    (BLOCK, (300, 200), (3, 2)),      # ragged blocks in both dims
    (BLOCK, (128, 384), (1, 3)),
])
def test_round_trip_error_within_e4m3_bound(block, shape, scale_shape):
    x = _varied(*shape)
    q = quantize_tiles(x) if block == TILE else quantize_blocks(x)
    assert q.data.dtype == E4M3 and q.data.shape == x.shape
    assert q.scale.dtype == torch.float32 and tuple(q.scale.shape) == scale_shape

    err = (x - q.dequantize()).abs()
    # 3 mantissa bits: <= 2^-4 relative in the normal range, 2^-10·s absolute below it.
    assert (err <= quantization_error_bound(q, x) * (1 + 1e-6)).all()
    # ... and quantisation really happened: the worst relative error is near the 2^-4 limit.
    normal = x.abs() >= 2.0**-6 * q.dequantize().abs().amax()
    assert (err[normal] / x.abs()[normal]).max() > 2.0**-5


def test_scale_is_amax_over_448_per_tile_and_max_maps_to_448():
    x = _varied(3, 256)
    q = quantize_tiles(x, "exact")
    amax = x.abs().reshape(3, 2, 128).amax(-1)
    torch.testing.assert_close(q.scale, amax / E4M3_MAX, rtol=1e-6, atol=0)
    assert (q.data.float().abs().reshape(3, 2, 128).amax(-1) == E4M3_MAX).all()


def test_pow2_scale_is_amax_over_448_rounded_up_to_a_power_of_two():
    x = _varied(3, 256)
    x[0, :128] *= E4M3_MAX / x[0, :128].abs().max()     # amax/448 = 1 exactly: stays 1, not 2
    q = quantize_tiles(x)                               # pow2 is the default
    exact = x.abs().reshape(3, 2, 128).amax(-1) / E4M3_MAX
    assert torch.equal(q.scale, torch.exp2(torch.ceil(torch.log2(q.scale))))   # powers of two
    assert (q.scale >= exact).all() and (q.scale < 2 * exact).all() and q.scale[0, 0] == 1.0
    tile_max = q.data.float().abs().reshape(3, 2, 128).amax(-1)
    assert (tile_max <= E4M3_MAX).all() and (tile_max > E4M3_MAX / 2 * (1 - 2.0**-4)).all()
    with pytest.raises(ValueError, match="scale rounding"):
        quantize_tiles(x, "nearest")


@pytest.mark.parametrize("shape", [(512, 512), (300, 200)])
def test_wgrad_requantisation_is_lossless_with_pow2_scales(shape):
    """Wgrad re-quantises the cached 1x128 tiles of x as 128x1 tiles (tiles of xᵀ). With power-of-two
    scales that only shifts exponents: the same numbers come back. With exact amax/448 scales most
    elements are rounded a second time. Measured on 512x512 N(0,1): relative error of xᵀ quantised
    once vs twice 2.58e-2 -> 3.65e-2 with exact scales, 2.66e-2 both times with pow2 (bench/fp8.py).
    Exactly lossless for every element in E4M3's normal range of its new tile; an element in the
    subnormal range (|v| < 2^-6·s, 1 in 60,000 of the 300x200 case) may lose its last bit."""
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    for rounding in ("pow2", "exact"):
        once = quantize_tiles(x, rounding).dequantize()
        requantised = quantize_tiles(once.t(), rounding)
        twice = requantised.dequantize().t()
        changed = twice != once
        if rounding == "pow2":
            new_scale = requantised.scale.repeat_interleave(128, dim=1)[:, :shape[0]].t()
            subnormal = once.abs() < 2.0**-6 * new_scale
            assert not changed[~subnormal].any()
            assert ((twice - once).abs() <= 2.0**-10 * new_scale).all()
            assert _rel(twice, x) == pytest.approx(_rel(once, x), rel=1e-4)
            if shape == (512, 512):
                assert not changed.any()
        else:
            assert changed.float().mean() > 0.5 and _rel(twice, x) > 1.2 * _rel(once, x)


def test_zero_tiles_and_all_zero_tensor_are_exact():
    x = _varied(4, 384)
    x[1, 128:256] = 0.0                      # one zero tile inside a non-zero tensor
    q = quantize_tiles(x)
    assert torch.isfinite(q.scale).all() and (q.scale > 0).all()
    assert (q.dequantize()[1, 128:256] == 0).all()

    for z in (torch.zeros(5, 130), torch.zeros(130, 260)):
        qz = quantize_tiles(z) if z.shape[0] == 5 else quantize_blocks(z)
        assert torch.isfinite(qz.scale).all()
        assert (qz.dequantize() == 0).all()


def test_tiny_gradients_are_not_flushed_to_zero():
    x = torch.full((2, 128), 1e-20)
    x[0, 0] = 3e-20
    assert _rel(quantize_tiles(x).dequantize(), x) < 2.0**-4


@pytest.mark.parametrize("block", [TILE, BLOCK])
def test_outlier_changes_only_its_own_tile(block):
    x = _varied(256, 384, seed=1)
    spiked = x.clone()
    spiked[130, 200] = 1e6                   # tile (130, 1) / block (1, 1)
    quant = quantize_tiles if block == TILE else quantize_blocks
    q, qs = quant(x, "exact"), quant(spiked, "exact")

    r, c = 130 // block[0], 200 // block[1]
    owner = torch.zeros_like(q.scale, dtype=torch.bool)
    owner[r, c] = True
    assert torch.equal(q.scale[~owner], qs.scale[~owner])
    assert qs.scale[r, c] == pytest.approx(1e6 / E4M3_MAX, rel=1e-6)

    rows = slice(r * block[0], (r + 1) * block[0])
    cols = slice(c * block[1], (c + 1) * block[1])
    outside = torch.ones_like(x, dtype=torch.bool)
    outside[rows, cols] = False
    assert torch.equal(q.data.view(torch.uint8)[outside], qs.data.view(torch.uint8)[outside])


def test_nan_stays_inside_its_tile():
    x = _varied(2, 256)
    x[0, 5] = float("nan")
    deq = quantize_tiles(x).dequantize()
    assert deq[0, :128].isnan().all()
    assert torch.isfinite(deq[0, 128:]).all() and torch.isfinite(deq[1]).all()


def test_block_transpose_reuses_scales():
    w = _varied(256, 384)
    q = quantize_blocks(w)
    assert torch.equal(q.t().dequantize(), q.dequantize().t())
    with pytest.raises(ValueError, match="re-quantising"):
        quantize_tiles(w).t()


@pytest.mark.parametrize("bad", [torch.zeros(4), torch.zeros(2, 3, 4), torch.zeros(2, 128, dtype=torch.long)])
def test_quantize_rejects_bad_input(bad):
    with pytest.raises(ValueError, match="quantize expects"):
        quantize_tiles(bad)


# ---------------------------------------------------------------- GEMM


def _gemm_error_bound(a: torch.Tensor, qa: ScaledFp8, b: torch.Tensor, qb: ScaledFp8) -> torch.Tensor:
    """|A·Bᵀ − Â·B̂ᵀ| <= Ea·|B|ᵀ + (|A| + Ea)·Ebᵀ (from â = a + da, |da| <= Ea), plus FP32
    accumulation rounding <= K·2^-24·|Â|·|B̂|ᵀ."""
    ea, eb = quantization_error_bound(qa, a).double(), quantization_error_bound(qb, b).double()
    abs_a, abs_b = a.abs().double(), b.abs().double()
    accumulation = a.shape[1] * 2.0**-24 * ((abs_a + ea) @ (abs_b + eb).t())
    return ea @ abs_b.t() + (abs_a + ea) @ eb.t() + accumulation


@pytest.mark.parametrize("b_block", [BLOCK, TILE])
@pytest.mark.parametrize("M,K,N", [(33, 300, 70), (16, 128, 8), (5, 4096, 130)])
def test_chunked_gemm_within_quantisation_bound(b_block, M, K, N):
    a, b = _varied(M, K, seed=2), _varied(N, K, seed=3)
    qa = quantize_tiles(a)
    qb = quantize_blocks(b) if b_block == BLOCK else quantize_tiles(b)
    got = fp8_gemm(qa, qb, backend="chunked")
    assert got.dtype == torch.float32 and got.shape == (M, N)

    exact = a.double() @ b.double().t()
    assert ((got.double() - exact).abs() <= _gemm_error_bound(a, qa, b, qb)).all()
    # FP32 accumulation: against the exact product of the *quantised* operands only FP32
    # rounding remains, orders of magnitude below the quantisation error.
    assert _rel(got, qa.dequantize(torch.float64) @ qb.dequantize(torch.float64).t()) < 1e-6


def test_promoted_accumulation_error_does_not_grow_with_k():
    """V3: without promotion, a ~14-bit accumulator loses ~2% at K=4096. With FP32 promotion
    every 128, the error is the quantisation error alone and is flat in K."""
    errors = {}
    for K in (128, 4096):
        g = torch.Generator().manual_seed(K)
        a, b = torch.randn(64, K, generator=g), torch.randn(64, K, generator=g)
        qa, qb = quantize_tiles(a), quantize_blocks(b)
        got = fp8_gemm(qa, qb, backend="chunked")
        errors[K] = _rel(got, a.double() @ b.double().t())
        assert _rel(got, qa.dequantize(torch.float64) @ qb.dequantize(torch.float64).t()) < 1e-6
    assert 0.01 < errors[128] < 0.06
    assert 0.7 < errors[4096] / errors[128] < 1.4, errors


def test_backends_agree_and_resolve_explicitly():
    a, b = _varied(40, 520), _varied(24, 520)
    qa, qb = quantize_tiles(a), quantize_blocks(b)
    chunked = fp8_gemm(qa, qb, backend="chunked")
    assert _rel(chunked, fp8_gemm(qa, qb, backend="dequantized")) < 1e-6
    assert fp8_gemm(qa, qb, torch.bfloat16).dtype == torch.bfloat16

    assert resolve_backend("auto", torch.device("cpu")) == "chunked"
    with pytest.raises(RuntimeError, match="not a CUDA device"):
        resolve_backend("blockwise", torch.device("cpu"))
    with pytest.raises(ValueError, match="unknown FP8 GEMM backend"):
        resolve_backend("fast", torch.device("cpu"))


def test_gemm_rejects_mismatched_operands():
    qa = quantize_tiles(torch.randn(4, 256))
    with pytest.raises(ValueError, match="contraction dims"):
        fp8_gemm(qa, quantize_blocks(torch.randn(8, 128)))
    with pytest.raises(ValueError, match="1x128 tile scales"):
        fp8_gemm(quantize_blocks(torch.randn(4, 256)), qa)


def _cublas_blockwise_contract(mat_a, mat_b, scale_a, recipe_a, scale_b, recipe_b, swizzle_a=None, swizzle_b=None,
                               output_dtype=None, **_):
    """What torch 2.13's CUDA ``scaled_mm`` demands of DeepSeek-style scales
    (aten/src/ATen/native/cuda/ScaledBlas.cpp, _scaled_block1x128_block{128x128,1x128}), checked
    here, then the product those layouts mean, computed on CPU."""
    from torch.nn.functional import ScalingType, SwizzleType

    assert swizzle_a == swizzle_b == SwizzleType.NO_SWIZZLE, "DeepSeek-style scales are not swizzled"
    (M, K), N = mat_a.shape, mat_b.shape[1]
    kb, l4 = -(-K // 128), 4 * -(-K // 512)
    assert mat_a.stride(1) == 1 and mat_b.stride(0) == 1, "cuBLAS FP8 takes row-major A, column-major B"
    assert K % 16 == 0 and M % 16 == 0 and N % 16 == 0, "leading dims must be 16-byte aligned"
    assert recipe_a == ScalingType.BlockWise1x128 and scale_a.dtype == torch.float32
    assert scale_a.shape == (M, kb) and scale_a.stride(0) == 1 and scale_a.stride(1) in (M, 1)
    if recipe_b == ScalingType.BlockWise128x128:
        assert scale_b.shape == (l4, -(-N // 128)) and scale_b.stride() == (1, l4)
        b_scale = scale_b[:kb].t().repeat_interleave(128, 0)[:N]                   # [N, kb]
    else:
        assert recipe_b == ScalingType.BlockWise1x128
        assert scale_b.shape == (N, kb) and scale_b.stride(0) == 1 and scale_b.stride(1) in (N, 1)
        b_scale = scale_b
    a = mat_a.float() * scale_a.repeat_interleave(128, 1)[:, :K]
    b = mat_b.t().float() * b_scale.repeat_interleave(128, 1)[:, :K]
    return (a @ b.t()).to(output_dtype)


@pytest.mark.parametrize("M,K,N", [(200, 640, 300), (128, 128, 128), (1, 900, 16)])
def test_blockwise_path_meets_the_cublas_scale_layout(monkeypatch, M, K, N):
    """No GPU here: run the Hopper path's operand/scale preparation against the layout contract
    of the CUDA kernel, so padding, strides and cropping are checked on CPU."""
    from model.fp8.gemm import _gemm_blockwise

    monkeypatch.setattr(torch.nn.functional, "scaled_mm", _cublas_blockwise_contract)
    a, b = _varied(M, K, seed=4), _varied(N, K, seed=5)
    qa = quantize_tiles(a)
    for qb in (quantize_blocks(b), quantize_tiles(b)):
        got = _gemm_blockwise(qa, qb, torch.float32)
        assert got.shape == (M, N)
        assert _rel(got, qa.dequantize(torch.float64) @ qb.dequantize(torch.float64).t()) < 1e-6


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_blockwise_cuda_matches_reference():
    device = torch.device("cuda")
    reason = blockwise_unsupported_reason(device)
    if reason:
        pytest.skip(reason)
    a, b = _varied(200, 640).to(device), _varied(300, 640).to(device)
    qa = quantize_tiles(a)
    for qb in (quantize_blocks(b), quantize_tiles(b)):
        got = fp8_gemm(qa, qb, backend="blockwise")
        assert _rel(got, qa.dequantize() @ qb.dequantize().t()) < 1e-3


# ---------------------------------------------------------------- FP8 linear

# Tolerance for FP8 vs FP32: each E4M3 rounding has RMS relative error ~2.6% (3 mantissa bits),
# and y and dx each combine two independent roundings (~3.7% in quadrature). Measured here:
# y 3.3-3.7%, dx 3.6%, dW 2.6% (summing over tokens averages the noise); BF16 0.3%. 6% leaves
# margin for other seeds while still failing on a wrong scale or a dropped tile.
FP8_REL_TOL = 0.06


def _linear_and_input(in_f=300, out_f=70, bias=True, seed=0):
    torch.manual_seed(seed)
    lin = nn.Linear(in_f, out_f, bias=bias)
    x = torch.randn(3, 11, in_f)
    x[0, 2] *= 50.0                          # an outlier token, as activations have
    return lin, x


def test_float8_linear_is_the_recipe_exactly():
    """Fprop, Dgrad, Wgrad equal the FP64 products of the operands quantised as V3 prescribes:
    x and dy in 1x128 tiles, W in 128x128 blocks, Wgrad's operands tiled along tokens."""
    lin, x = _linear_and_input()
    x.requires_grad_(True)
    fp8 = Float8Linear.from_linear(copy.deepcopy(lin))
    y = fp8(x)
    g = torch.randn_like(y)
    g[1] *= 100.0                            # gradient outliers in some tokens
    y.backward(g)

    x2, g2, w = x.detach().reshape(-1, 300), g.reshape(-1, 70), lin.weight.detach()
    qx, qw, qg = quantize_tiles(x2), quantize_blocks(w), quantize_tiles(g2)
    deq = lambda q: q.dequantize(torch.float64)  # noqa: E731
    assert _rel(y.reshape(-1, 70), deq(qx) @ deq(qw).t() + lin.bias.double()) < 1e-6
    assert _rel(x.grad.reshape(-1, 300), deq(qg) @ deq(qw)) < 1e-6
    wgrad = deq(quantize_tiles(g2.t())) @ deq(quantize_tiles(qx.dequantize().t())).t()
    assert _rel(fp8.weight.grad, wgrad) < 1e-6
    torch.testing.assert_close(fp8.bias.grad, g2.sum(0), rtol=1e-6, atol=1e-5)

    # The test can tell the tiling apart: 128x128 blocks on dy would give a different dx. With
    # power-of-two scales a shared block scale only shifts exponents, so it shows only where a token
    # is ~2^15 times smaller than the block's outlier token and falls into E4M3's subnormals.
    g_far = g.clone()
    g_far[1] *= 1e5
    x.grad = None
    fp8(x).backward(g_far)
    blocked_dgrad = deq(quantize_blocks(g_far.reshape(-1, 70))) @ deq(qw)
    tiled_dgrad = deq(quantize_tiles(g_far.reshape(-1, 70))) @ deq(qw)
    assert _rel(x.grad[0], tiled_dgrad[:11]) < 1e-6
    assert _rel(x.grad[0], blocked_dgrad[:11]) > 1e-3


@pytest.mark.parametrize("in_f,out_f", [(300, 70), (256, 128)])
def test_float8_linear_close_to_fp32_and_bf16(in_f, out_f):
    lin, x = _linear_and_input(in_f, out_f)
    fp8 = Float8Linear.from_linear(copy.deepcopy(lin))
    bf16 = copy.deepcopy(lin)

    def run(module, autocast_bf16=False):
        xi = x.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast_bf16):
            y = module(xi)
        y.float().backward(torch.ones_like(y, dtype=torch.float32) + torch.linspace(0, 1, out_f))
        return y.float(), xi.grad, module.weight.grad

    ref = run(lin)
    got = run(fp8)
    low = run(bf16, autocast_bf16=True)
    for name, r, f, b in zip(("y", "dx", "dW"), ref, got, low, strict=True):
        assert _rel(f, r) < FP8_REL_TOL, name
        assert _rel(b, r) < 0.01, name       # BF16 is ~10x closer, as expected
        assert torch.nn.functional.cosine_similarity(f.flatten(), r.flatten(), dim=0) > 0.998, name


def test_float8_linear_under_autocast_dtypes():
    lin, x = _linear_and_input(bias=False)
    fp8 = Float8Linear.from_linear(lin)
    x.requires_grad_(True)
    with precision_autocast("fp8", "cpu"):
        y = fp8(x)
    assert y.dtype == torch.bfloat16
    y.sum().backward()
    assert x.grad.dtype == torch.float32 and fp8.weight.grad.dtype == torch.float32

    xb = x.detach().bfloat16().requires_grad_(True)
    fp8_linear(xb, fp8.weight).float().sum().backward()
    assert xb.grad.dtype == torch.bfloat16


def test_empty_batch_forward_and_backward():
    """An MoE expert can receive no tokens in a step."""
    lin = Float8Linear(256, 64)
    x = torch.zeros(0, 256, requires_grad=True)
    y = lin(x)
    assert y.shape == (0, 64)
    y.sum().backward()
    assert torch.equal(lin.weight.grad, torch.zeros(64, 256))


def test_float8_linear_is_drop_in():
    lin = nn.Linear(300, 70)
    fp8 = Float8Linear.from_linear(lin)
    assert fp8.weight is lin.weight and fp8.bias is lin.bias
    assert fp8.state_dict().keys() == lin.state_dict().keys()
    fresh = Float8Linear(300, 70)
    fresh.load_state_dict(lin.state_dict())
    assert torch.equal(fresh.weight, lin.weight)
    assert fp8.weight.dtype == torch.float32 and "e4m3" in repr(fp8)
    with pytest.raises(ValueError, match="features"):
        fp8(torch.randn(2, 299))


# ---------------------------------------------------------------- conversion


class _Expert(nn.Module):
    def __init__(self):
        super().__init__()
        self.gate_proj, self.up_proj, self.down_proj = nn.Linear(8, 16), nn.Linear(8, 16), nn.Linear(16, 8)


def _tiny_tree() -> nn.Module:
    """Module names as in model/ (DeepSeek-V3 checkpoint names, ``model.`` dropped)."""
    layer = nn.Module()
    layer.self_attn = nn.Module()
    layer.self_attn.q_proj, layer.self_attn.o_proj = nn.Linear(8, 8), nn.Linear(8, 8)
    layer.mlp = nn.Module()
    layer.mlp.gate = nn.Linear(8, 4, bias=False)           # router
    layer.mlp.experts = nn.ModuleDict({"0": _Expert(), "1": _Expert()})
    layer.input_layernorm = nn.LayerNorm(8)
    layer.kv_a_layernorm = nn.Linear(8, 8)                   # a Linear named like a norm
    layer.mha = nn.MultiheadAttention(8, 2)                  # out_proj is a Linear subclass
    mtp = nn.Module()
    mtp.eh_proj = nn.Linear(16, 8, bias=False)
    mtp.shared_head = nn.Module()
    mtp.shared_head.head = nn.Linear(8, 32, bias=False)
    mtp.mlp = _Expert()
    root = nn.Module()
    root.embed_tokens = nn.Embedding(32, 8)
    root.layers = nn.ModuleDict({"0": layer})
    root.lm_head = nn.Linear(8, 32, bias=False)
    root.mtp = nn.ModuleDict({"0": mtp})
    return root


def test_convert_to_fp8_default_keeps_the_v3_high_precision_modules():
    root = _tiny_tree()
    params_before = {n: p for n, p in root.named_parameters()}
    converted = convert_to_fp8(root)
    expected = sorted(
        ["layers.0.self_attn.q_proj", "layers.0.self_attn.o_proj"]
        + [f"layers.0.mlp.experts.{e}.{p}" for e in "01" for p in ("gate_proj", "up_proj", "down_proj")]
        + [f"mtp.0.mlp.{p}" for p in ("gate_proj", "up_proj", "down_proj")])
    assert converted == expected
    for name, module in root.named_modules():
        assert isinstance(module, Float8Linear) == (name in expected), name
    for kept in ("lm_head", "layers.0.mlp.gate", "mtp.0.eh_proj", "mtp.0.shared_head.head",
                 "layers.0.kv_a_layernorm"):
        assert type(root.get_submodule(kept)) is nn.Linear
    # Parameters are the same objects under the same names.
    assert all(p is params_before[n] for n, p in root.named_parameters())
    assert convert_to_fp8(root) == []        # idempotent


def test_convert_to_fp8_custom_filter_and_shared_modules():
    root = _tiny_tree()
    converted = convert_to_fp8(root, include=lambda name, m: name.endswith("down_proj"))
    assert converted == ["layers.0.mlp.experts.0.down_proj", "layers.0.mlp.experts.1.down_proj",
                         "mtp.0.mlp.down_proj"]

    shared = nn.Linear(4, 4)
    parent = nn.Module()
    parent.a, parent.b = nn.Sequential(shared), nn.Sequential(shared)
    assert convert_to_fp8(parent) == ["a.0", "b.0"]
    assert parent.a[0] is parent.b[0] and isinstance(parent.a[0], Float8Linear)
    with pytest.raises(ValueError, match="in place"):
        convert_to_fp8(nn.Linear(4, 4))


def test_prepare_model_validates_precision_and_master_weights():
    mlp = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 4))
    assert prepare_model(mlp, "bf16") == []
    assert prepare_model(mlp, "fp8") == ["0", "2"]
    with pytest.raises(ValueError, match="unknown precision"):
        prepare_model(mlp, "fp16")
    with pytest.raises(ValueError, match="master weights must be FP32"):
        prepare_model(nn.Sequential(nn.Linear(8, 8)).bfloat16(), "fp8")


# ---------------------------------------------------------------- training


@pytest.fixture
def one_thread():
    """Tiny GEMMs gain nothing from threads, and on a shared 2-core box OpenMP spin-waiting under
    contention made 60 steps take 8 s instead of 0.5 s."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _train_student(precision: str, task: str, steps: int = 100) -> list[float]:
    """An MLP student learns a fixed random teacher from a fresh batch every step (no repeats,
    like pretraining). The targets carry irreducible noise, as language data does: Gaussian
    noise (σ=0.5) for ``regression``, labels sampled from the teacher's softmax for
    ``classification``. Same init and data for every precision."""
    out = 64 if task == "regression" else 32
    torch.manual_seed(1)
    teacher = nn.Sequential(nn.Linear(128, 256), nn.Tanh(), nn.Linear(256, out))
    teacher.apply(lambda m: isinstance(m, nn.Linear) and nn.init.normal_(m.weight, std=0.15))
    torch.manual_seed(2)
    student = nn.Sequential(nn.Linear(128, 256), nn.GELU(), nn.Linear(256, 256), nn.GELU(), nn.Linear(256, out))
    assert len(prepare_model(student, precision)) == (3 if precision == "fp8" else 0)
    opt = torch.optim.AdamW(student.parameters(), lr=2e-3, betas=(0.9, 0.95), weight_decay=0.1)
    data = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(steps):
        x = torch.randn(128, 128, generator=data)
        with torch.no_grad():
            if task == "regression":
                target = teacher(x) + 0.5 * torch.randn(128, out, generator=data)
            else:
                target = torch.multinomial(teacher(x).softmax(-1), 1, generator=data).squeeze(1)
        with precision_autocast(precision, "cpu"):
            pred = student(x).float()
        loss = (nn.functional.mse_loss if task == "regression" else nn.functional.cross_entropy)(pred, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("task,tol", [("regression", 0.02), ("classification", 0.01)])
def test_fp8_training_tracks_bf16(one_thread, task, tol):
    """Measured here: FP8 ends 0.5% (regression) / 0.07% (classification) above BF16, BF16 within
    0.01% of FP32. FP8's forward noise (~3.7% RMS per GEMM) adds a small constant to the loss, so
    the gap is relative to the data's irreducible loss; on noise-free targets fitted far below
    it the relative gap grows (1.8% at σ=0 here), which is why the targets carry noise."""
    curves = {p: _train_student(p, task) for p in ("bf16", "fp8")}
    final = {p: sum(c[-20:]) / 20 for p, c in curves.items()}
    assert final["bf16"] < 0.9 * curves["bf16"][0]           # it learns
    assert abs(final["fp8"] - final["bf16"]) / final["bf16"] < tol, final
