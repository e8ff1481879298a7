"""Normalisation layers (``NORMS``), with GPT-NeoX's parameter names.

Every entry is built as ``NORMS.get(name)(dim, eps=..., bias=...)`` and normalises the last
dimension of a ``[..., dim]`` tensor.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from megatron.model.registry import Registry

NORMS: Registry[type[nn.Module]] = Registry("norm")


@NORMS.register("layernorm")
class LayerNorm(nn.LayerNorm):
    """Standard LayerNorm (``weight``, and ``bias`` when ``use_bias_in_norms``)."""

    def __init__(self, dim: int, eps: float = 1e-5, bias: bool = True) -> None:
        super().__init__(dim, eps=eps, bias=bias)


@NORMS.register("non_parametric_layernorm")
class NonParametricLayerNorm(nn.Module):
    """LayerNorm without a learned scale or shift (no parameters at all)."""

    def __init__(self, dim: int, eps: float = 1e-5, bias: bool = True) -> None:
        super().__init__()
        self.dim, self.eps = dim, eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, (self.dim,), eps=self.eps)


@NORMS.register("rmsnorm")
class RMSNorm(nn.Module):
    """``scale * x / (rms(x) + eps)`` (+ ``offset``), as GPT-NeoX writes it.

    GPT-NeoX adds eps to the RMS rather than inside the square root, and names the gain
    ``scale`` (and the optional shift ``offset``); checkpoints depend on both.
    """

    def __init__(self, dim: int, eps: float = 1e-8, bias: bool = False) -> None:
        super().__init__()
        self.eps = eps
        self.scale = nn.Parameter(torch.ones(dim))
        self.offset = nn.Parameter(torch.zeros(dim)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rms = x.norm(2, dim=-1, keepdim=True) * x.shape[-1] ** -0.5
        out = self.scale * (x / (rms + self.eps))
        return out if self.offset is None else out + self.offset


@NORMS.register("scalenorm")
class ScaleNorm(nn.Module):
    """``g * x / max(||x||, eps)`` with one learned scalar ``g`` (Nguyen & Salazar)."""

    def __init__(self, dim: int, eps: float = 1e-5, bias: bool = False) -> None:
        super().__init__()
        self.eps = eps
        self.g = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x / x.norm(2, dim=-1, keepdim=True).clamp(min=self.eps) * self.g


@NORMS.register("te_layernorm")
class TELayerNorm(LayerNorm):
    """Transformer Engine's LayerNorm as plain PyTorch: same math and names as ``layernorm``.

    GPT-NeoX's ``te_*`` norms need the TE package and a GPU; these equivalents run anywhere
    and load the same checkpoints.
    """


@NORMS.register("te_rmsnorm")
class TERMSNorm(nn.Module):
    """Transformer Engine's RMSNorm as plain PyTorch: ``weight * x / sqrt(mean(x^2) + eps)``.

    Unlike GPT-NeoX's own ``rmsnorm`` the eps sits inside the square root and the gain is
    named ``weight`` (TE's name), so TE-trained checkpoints load unchanged.
    """

    def __init__(self, dim: int, eps: float = 1e-8, bias: bool = False) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)


def build_norm(name: str, dim: int, eps: float, bias: bool) -> nn.Module:
    """The single build site for norms (final norm, block norms, QK norm)."""
    return NORMS.get(name)(dim, eps=eps, bias=bias)
