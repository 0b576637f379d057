"""Next-token cross-entropy: on logits, or fused with the output head in token chunks.

``linear_cross_entropy(h, head_weight, targets)`` gives the same sum as
``F.cross_entropy(h @ W.T, targets, reduction="sum")`` without ever holding the [N, V] logits of
the whole batch: the head runs over ``chunk`` tokens at a time, and the gradient of each chunk
(softmax - one-hot, then ``g @ W`` and ``g.T @ h``) is computed right away, so the backward is
one multiply by the incoming scale. Same matmul FLOPs as head + CE forward and backward, but
the logits and their FP32 copy, log-softmax output and gradient (4 passes over N x V floats)
become a chunk that stays in cache; the main head and the MTP head each save that. The idea is
Liger-Kernel's fused linear cross-entropy, written in plain torch so it runs on CPU and CUDA.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.distributed.tensor import DTensor

IGNORE_INDEX = -100
DEFAULT_CHUNK = 512   # tokens per head chunk: 512 x 4096 FP32 logits = 8 MiB


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean cross-entropy over targets != -100 (0 with none) and their count. FP32."""
    total = F.cross_entropy(logits.flatten(0, -2).float(), targets.flatten(),
                            ignore_index=IGNORE_INDEX, reduction="sum")
    count = (targets != IGNORE_INDEX).sum()
    return total / count.clamp(min=1), count


def linear_cross_entropy(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                         chunk: int = DEFAULT_CHUNK) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean cross-entropy of ``h @ weight.T`` against ``targets`` (-100 ignored) and the count,
    without materialising the full logits. h [..., D], weight [V, D], targets [...].

    Matmuls run in the autocast dtype when autocast is on (as ``nn.Linear`` would), softmax
    statistics in FP32. Falls back to the plain path for a sharded (DTensor) weight."""
    if isinstance(weight, DTensor):
        return cross_entropy(F.linear(h, weight), targets)
    count = (targets != IGNORE_INDEX).sum()
    flat_h, flat_t = h.reshape(-1, h.shape[-1]), targets.reshape(-1)
    dtype = torch.get_autocast_dtype(h.device.type) if torch.is_autocast_enabled(h.device.type) else h.dtype
    with_grad = torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad)
    total = _LinearCrossEntropy.apply(flat_h, weight, flat_t, chunk, dtype, with_grad)
    return total / count.clamp(min=1), count


class _LinearCrossEntropy(torch.autograd.Function):
    """Σ_n CE(h_n @ W.T, t_n); the gradients are computed in the forward, chunk by chunk."""

    @staticmethod
    def forward(ctx, h, weight, targets, chunk, dtype, with_grad):
        with torch.autocast(h.device.type, enabled=False):
            w = weight.to(dtype)
            grad_h = torch.empty_like(h) if with_grad and ctx.needs_input_grad[0] else None
            grad_w = (torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
                      if with_grad and ctx.needs_input_grad[1] else None)
            total = torch.zeros((), dtype=torch.float32, device=h.device)
            for start in range(0, h.shape[0], chunk):
                hc = h[start:start + chunk].to(dtype)
                tc = targets[start:start + chunk]
                keep = tc != IGNORE_INDEX
                tgt = tc.clamp(min=0)[:, None]
                logits = (hc @ w.t()).float()
                lse = logits.logsumexp(dim=-1, keepdim=True)
                total += ((lse - logits.gather(1, tgt)).squeeze(1) * keep).sum()
                if grad_h is None and grad_w is None:
                    continue
                g = logits.sub_(lse).exp_()                      # softmax, in place
                g.scatter_add_(1, tgt, -torch.ones_like(tgt, dtype=g.dtype))
                g.mul_(keep[:, None])
                g = g.to(dtype)
                if grad_h is not None:
                    grad_h[start:start + chunk] = g @ w
                if grad_w is not None:
                    grad_w += (g.t() @ hc).float()
        ctx.save_for_backward(grad_h, grad_w)
        ctx.dtypes = (h.dtype, weight.dtype)
        return total

    @staticmethod
    def backward(ctx, grad_total):
        grad_h, grad_w = ctx.saved_tensors
        h_dtype, w_dtype = ctx.dtypes
        dh = (grad_h * grad_total).to(h_dtype) if grad_h is not None else None
        dw = (grad_w * grad_total).to(w_dtype) if grad_w is not None else None
        return dh, dw, None, None, None, None
