"""Attention kernels (``ATTENTION_KERNELS``), all with one signature.

``kernel(q, k, v, *, bias, causal, window, scale, dropout_p, softmax_fp32, coeff) -> out``
with q, k, v ``[b, heads, s, head_dim]`` (k and v already expanded to the query heads) and
``out [b, heads, sq, head_dim]``. ``bias`` is an additive score bias broadcastable to
``[b, heads, sq, sk]`` (ALiBi, T5-RPE) or None. ``window`` is GPT-NeoX's
``sliding_window_width`` (flash-attn's left window): query ``i`` sees keys
``i - window .. i``. ``reference`` is the plain-PyTorch oracle the others are tested against.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from megatron.model.errors import ModelSpecError
from megatron.model.registry import Registry
from megatron.utils.gemm import upcast_dtype

Kernel = Callable[..., torch.Tensor]
ATTENTION_KERNELS: Registry[Kernel] = Registry("attention kernel")


def keep_mask(sq: int, sk: int, causal: bool, window: int | None,
              device: torch.device | None = None) -> torch.Tensor | None:
    """Boolean ``[sq, sk]`` mask of the (query, key) pairs allowed to attend, or None.

    Queries are the last ``sq`` positions of the ``sk`` keys, so a key is in the past when
    ``j <= i + (sk - sq)``; with a window it must also satisfy ``i + (sk - sq) - j <= window``.
    """
    if not causal and window is None:
        return None
    q_pos = torch.arange(sk - sq, sk, device=device)[:, None]
    k_pos = torch.arange(sk, device=device)[None, :]
    keep = torch.ones(sq, sk, dtype=torch.bool, device=device)
    if causal:
        keep &= k_pos <= q_pos
    if window is not None:
        keep &= (q_pos - k_pos) <= window
    return keep


@ATTENTION_KERNELS.register("reference")
def reference_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
                        bias: torch.Tensor | None = None, causal: bool = True,
                        window: int | None = None, scale: float | None = None,
                        dropout_p: float = 0.0, softmax_fp32: bool = False,
                        coeff: float = 1.0) -> torch.Tensor:
    """Explicit softmax(q k^T * scale + bias) v; the oracle for the other kernels.

    ``coeff`` is Megatron's query-key layer scaling: scores are computed divided by
    ``coeff`` (to keep fp16 in range) and multiplied back inside an fp32 softmax.
    """
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = torch.matmul(q, k.transpose(-1, -2)) * (scale / coeff)  # [b, nh, sq, sk]
    if softmax_fp32 or coeff != 1.0:
        scores = scores.float()
    scores = scores * coeff
    if bias is not None:
        scores = scores + bias
    keep = keep_mask(q.shape[-2], k.shape[-2], causal, window, q.device)
    if keep is not None:
        scores = scores.masked_fill(~keep, torch.finfo(scores.dtype).min)
    probs = torch.softmax(scores, dim=-1).to(v.dtype)
    probs = F.dropout(probs, p=dropout_p, training=dropout_p > 0)
    return torch.matmul(probs, v)  # [b, nh, sq, d]


@ATTENTION_KERNELS.register("sdpa")
def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
                   bias: torch.Tensor | None = None, causal: bool = True,
                   window: int | None = None, scale: float | None = None,
                   dropout_p: float = 0.0, softmax_fp32: bool = False,
                   coeff: float = 1.0) -> torch.Tensor:
    """``torch.nn.functional.scaled_dot_product_attention`` (fused on CPU and GPU).

    A plain causal mask uses the fast ``is_causal`` path; a bias or a window becomes an
    additive float mask. ``coeff`` and ``softmax_fp32`` change nothing here: the fused
    kernel already accumulates the softmax in fp32. bf16 inputs run in fp32 on CPUs without
    bf16 GEMMs (``megatron.utils.gemm``).
    """
    upcast = upcast_dtype(q.dtype, q.device)
    if upcast is not None:  # no bf16 GEMM on this CPU: same arithmetic on the fp32 units
        out = sdpa_attention(q.to(upcast), k.to(upcast), v.to(upcast), bias=bias,
                             causal=causal, window=window, scale=scale, dropout_p=dropout_p)
        return out.to(q.dtype)
    sq, sk = q.shape[-2], k.shape[-2]
    if bias is None and window is None and (sq == sk or not causal):
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p,
                                              is_causal=causal, scale=scale)
    mask = torch.zeros(sq, sk, dtype=q.dtype, device=q.device)
    keep = keep_mask(sq, sk, causal, window, q.device)
    if keep is not None:
        mask = mask.masked_fill(~keep, torch.finfo(q.dtype).min)
    if bias is not None:
        mask = mask + bias.to(q.dtype)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p,
                                          scale=scale)


@ATTENTION_KERNELS.register("flash")
def flash_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
                    bias: torch.Tensor | None = None, causal: bool = True,
                    window: int | None = None, scale: float | None = None,
                    dropout_p: float = 0.0, softmax_fp32: bool = False,
                    coeff: float = 1.0) -> torch.Tensor:
    """flash-attn 2 on CUDA (fp16/bf16, no score bias); ``sdpa`` everywhere else.

    The package is imported only here, so it stays an optional GPU extra.
    """
    usable = q.is_cuda and q.dtype in (torch.float16, torch.bfloat16) and bias is None
    if not usable:
        return sdpa_attention(q, k, v, bias=bias, causal=causal, window=window, scale=scale,
                              dropout_p=dropout_p)
    try:
        from flash_attn import flash_attn_func
    except ImportError as err:
        raise ModelSpecError("attention type 'flash' needs the flash-attn package on GPU "
                             "machines: pip install flash-attn (see requirements/)") from err
    window_size = (-1, -1) if window is None else (window, 0)
    out = flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                          dropout_p=dropout_p, softmax_scale=scale, causal=causal,
                          window_size=window_size)  # [b, s, nh, d]
    return out.transpose(1, 2)
