"""Optimizer registry keyed by GPT-NeoX's ``optimizer.type``, weight-decay groups, and the
optimizers torch lacks (Lion, MADGRAD with decoupled decay, SM3).

GPT-NeoX builds ``cls(param_groups, weight_decay=weight_decay, **optimizer["params"])``; we do
the same, so a config's ``params`` block (lr, betas, eps, ...) carries over unchanged. Types are
matched case-insensitively. ``adam`` is AdamW (decoupled decay), as DeepSpeed's FusedAdam that
GPT-NeoX uses defaults to ``adam_w_mode=True``.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch

from megatron.utils.logging import get_logger

log = get_logger(__name__)


class OptimizerError(ValueError):
    """The optimizer config names an unknown type, a bad parameter, or a missing package."""


@dataclass(frozen=True)
class DeepSpeedOptimizer:
    """Marker returned instead of an optimizer when DeepSpeed must build it from its config.

    The caller puts ``config`` under the DeepSpeed config's ``optimizer`` key and passes the
    param groups to ``deepspeed.initialize(model_parameters=...)`` with ``optimizer=None``.
    """

    config: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class BuildContext:
    """Run settings a builder may need besides the ``params`` block."""

    weight_decay: float = 0.0
    use_bnb_optimizer: bool = False


Built = torch.optim.Optimizer | DeepSpeedOptimizer
Groups = list[dict[str, Any]]
Builder = Callable[[Groups, dict[str, Any], BuildContext], Built]
OPTIMIZERS: dict[str, Builder] = {}


def register(name: str) -> Callable[[Builder], Builder]:
    """Add a builder to :data:`OPTIMIZERS` under a lower-case type name."""

    def wrap(fn: Builder) -> Builder:
        OPTIMIZERS[name.lower()] = fn
        return fn

    return wrap


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Split trainable parameters into a decayed and a non-decayed group, as GPT-NeoX does.

    Biases and every parameter of a normalisation module (any module whose class name contains
    ``Norm``: LayerNorm, RMSNorm, ScaleNorm, ...) get ``weight_decay = 0``. With
    ``weight_decay == 0`` a single group is returned, which keeps 1-bit Adam's per-group
    communication to one call. Empty groups are dropped.
    """
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for module in model.modules():
        is_norm = "norm" in type(module).__name__.lower()
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad:
                continue
            exempt = is_norm or name == "bias" or weight_decay == 0.0
            (no_decay if exempt else decay).append(param)
    groups = [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def _kwargs_for(cls: Callable[..., Any], params: dict[str, Any], type_name: str) -> dict[str, Any]:
    """Check ``params`` against the optimizer's signature; tuples for betas."""
    accepted = set(inspect.signature(cls).parameters) - {"self", "params"}
    unknown = sorted(set(params) - accepted)
    if unknown:
        raise OptimizerError(
            f"optimizer.params for type {type_name!r} has unknown keys {unknown}; "
            f"{getattr(cls, '__name__', cls)} accepts {sorted(accepted)}"
        )
    out = dict(params)
    if isinstance(out.get("betas"), list):
        out["betas"] = tuple(out["betas"])
    return out


def _with_decay(params: dict[str, Any], ctx: BuildContext) -> dict[str, Any]:
    """GPT-NeoX passes the top-level ``weight_decay``; an explicit one in params wins."""
    return {"weight_decay": ctx.weight_decay, **params}


def _fast_torch(cls: type[torch.optim.Optimizer], groups: Groups, kw: dict) -> Built:
    """Prefer torch's fused kernel, fall back to the multi-tensor (foreach) path."""
    try:
        return cls(groups, **kw, fused=True)
    except (RuntimeError, ValueError, TypeError) as err:
        log.debug("fused %s unavailable (%s); using foreach", cls.__name__, err)
        return cls(groups, **kw, foreach=True)


@register("adam")
@register("adamw")
def _adamw(groups: Groups, params: dict[str, Any], ctx: BuildContext) -> Built:
    if ctx.use_bnb_optimizer:
        return _bnb_adam8bit(groups, params, ctx)
    kw = _kwargs_for(torch.optim.AdamW, _with_decay(params, ctx), "adam")
    return _fast_torch(torch.optim.AdamW, groups, kw)


def _bnb_adam8bit(groups: Groups, params: dict[str, Any], ctx: BuildContext) -> Built:
    try:
        import bitsandbytes as bnb
    except ImportError as err:
        raise OptimizerError(
            "use_bnb_optimizer: true needs bitsandbytes; install it with "
            "`pip install bitsandbytes` (and make sure torchvision is not installed alongside)"
        ) from err
    cls = bnb.optim.Adam8bit
    return cls(groups, **_kwargs_for(cls, _with_decay(params, ctx), "adam (bitsandbytes)"))


@register("cpu_adam")
def _cpu_adam(groups: Groups, params: dict[str, Any], ctx: BuildContext) -> Built:
    from deepspeed.ops.adam import DeepSpeedCPUAdam  # JIT-compiles a C++ op on first use

    kw = _kwargs_for(DeepSpeedCPUAdam, _with_decay(params, ctx), "cpu_adam")
    return DeepSpeedCPUAdam(groups, **kw)


@register("cpu_torch_adam")
def _cpu_torch_adam(groups: Groups, params: dict[str, Any], ctx: BuildContext) -> Built:
    kw = _kwargs_for(torch.optim.Adam, _with_decay(params, ctx), "cpu_torch_adam")
    return torch.optim.Adam(groups, **kw, foreach=True)


@register("sgd")
def _sgd(groups: Groups, params: dict[str, Any], ctx: BuildContext) -> Built:
    kw = _kwargs_for(torch.optim.SGD, _with_decay(params, ctx), "sgd")
    return torch.optim.SGD(groups, **kw, foreach=True)


@register("onebitadam")
def _onebitadam(groups: Groups, params: dict[str, Any], ctx: BuildContext) -> Built:
    # 1-bit Adam compresses its own all-reduce, so DeepSpeed has to construct it.
    return DeepSpeedOptimizer({"type": "OneBitAdam", "params": _with_decay(params, ctx)})


@register("lion")
def _lion(groups: Groups, params: dict[str, Any], ctx: BuildContext) -> Built:
    return Lion(groups, **_kwargs_for(Lion, _with_decay(params, ctx), "lion"))


@register("madgrad_wd")
def _madgrad(groups: Groups, params: dict[str, Any], ctx: BuildContext) -> Built:
    return MadgradWD(groups, **_kwargs_for(MadgradWD, _with_decay(params, ctx), "madgrad_wd"))


@register("sm3")
def _sm3(groups: Groups, params: dict[str, Any], ctx: BuildContext) -> Built:
    if ctx.weight_decay:
        log.warning("sm3 has no weight decay (as in GPT-NeoX); weight_decay=%s is ignored",
                    ctx.weight_decay)
    return SM3(groups, **_kwargs_for(SM3, params, "sm3"))


def build_optimizer(
    groups: Iterable[dict[str, Any]],
    optimizer_cfg: dict[str, Any],
    *,
    weight_decay: float = 0.0,
    use_bnb_optimizer: bool = False,
) -> Built:
    """Build the optimizer named by ``optimizer_cfg["type"]``.

    Args:
        groups: param groups, usually from :func:`param_groups`.
        optimizer_cfg: GPT-NeoX's ``optimizer`` dict, ``{"type": ..., "params": {...}}``.
        weight_decay: the top-level ``weight_decay`` key (groups may override it with 0).
        use_bnb_optimizer: with type adam, use bitsandbytes' 8-bit Adam.

    Returns:
        A torch optimizer, or a :class:`DeepSpeedOptimizer` marker for ``onebitadam``.
    """
    type_name = optimizer_cfg.get("type") if isinstance(optimizer_cfg, dict) else None
    if not isinstance(type_name, str):
        raise OptimizerError(f"optimizer must be a dict with a 'type' key, got {optimizer_cfg!r}")
    builder = OPTIMIZERS.get(type_name.lower())
    if builder is None:
        raise OptimizerError(
            f"optimizer.type {type_name!r} is not known; expected one of {sorted(OPTIMIZERS)}"
        )
    if use_bnb_optimizer and type_name.lower() not in ("adam", "adamw"):
        raise OptimizerError(f"use_bnb_optimizer needs optimizer.type adam, got {type_name!r}")
    params = dict(optimizer_cfg.get("params") or {})
    ctx = BuildContext(weight_decay=weight_decay, use_bnb_optimizer=use_bnb_optimizer)
    return builder(list(groups), params, ctx)


def _evaluate(closure: Callable[[], float] | None) -> float | None:
    """Run a step's optional closure with gradients on (steps run under no_grad)."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


def _grads_of(group: dict[str, Any], who: str) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The group's parameters that have gradients, and those gradients (dense only)."""
    params = [p for p in group["params"] if p.grad is not None]
    if any(p.grad.is_sparse for p in params):
        raise RuntimeError(f"{who} does not support sparse gradients")
    return params, [p.grad for p in params]


class Lion(torch.optim.Optimizer):
    """Lion (Chen et al. 2023, arXiv:2302.06675): the sign of an interpolated momentum.

    ``u = sign(b1 m + (1 - b1) g)``; ``p <- p (1 - lr wd) - lr u``; ``m <- b2 m + (1 - b2) g``.
    One momentum buffer (half of Adam's state), updated with multi-tensor ops.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.9, 0.99),
        weight_decay: float = 0.0,
    ) -> None:
        if lr <= 0 or not all(0.0 <= b < 1.0 for b in betas) or weight_decay < 0:
            raise OptimizerError(f"lion: need lr > 0, betas in [0, 1), weight_decay >= 0; got "
                                 f"lr={lr}, betas={betas}, weight_decay={weight_decay}")
        super().__init__(params, {"lr": lr, "betas": betas, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """One Lion update for every parameter with a gradient."""
        loss = _evaluate(closure)
        for group in self.param_groups:
            params, grads = _grads_of(group, "lion")
            if not params:
                continue
            moms = [self.state[p].setdefault("exp_avg", torch.zeros_like(p)) for p in params]
            (b1, b2), lr, wd = group["betas"], group["lr"], group["weight_decay"]
            if wd:
                torch._foreach_mul_(params, 1.0 - lr * wd)
            update = torch._foreach_mul(moms, b1)
            torch._foreach_add_(update, grads, alpha=1.0 - b1)
            torch._foreach_sign_(update)
            torch._foreach_add_(params, update, alpha=-lr)
            torch._foreach_lerp_(moms, grads, 1.0 - b2)
        return loss


class MadgradWD(torch.optim.Optimizer):
    """MADGRAD (Defazio & Jelassi 2021, arXiv:2101.11075) with AdamW-style decoupled decay.

    Dual averaging with a cube-root adaptive denominator: with ``lamb = lr sqrt(k + 1)``,
    ``v += lamb g^2``, ``s += lamb g``, ``z = x0 - s / (v^(1/3) + eps)`` and
    ``p <- momentum p + (1 - momentum) z`` (``p = z`` without momentum). As in the reference
    and GPT-NeoX's ``madgrad_wd``, the step uses ``lr + eps``.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-2,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        eps: float = 1e-6,
    ) -> None:
        if lr <= 0 or not 0.0 <= momentum < 1.0 or weight_decay < 0 or eps < 0:
            raise OptimizerError(f"madgrad_wd: need lr > 0, momentum in [0, 1), weight_decay "
                                 f">= 0, eps >= 0; got lr={lr}, momentum={momentum}, "
                                 f"weight_decay={weight_decay}, eps={eps}")
        defaults = {"lr": lr, "momentum": momentum, "weight_decay": weight_decay, "eps": eps}
        super().__init__(params, defaults)

    def _state_lists(self, params: list[torch.Tensor], momentum: float) -> tuple[list, list, list]:
        for p in params:
            st = self.state[p]
            if "grad_sum_sq" not in st:
                st.update(step=0, grad_sum_sq=torch.zeros_like(p), s=torch.zeros_like(p))
                if momentum:
                    st["x0"] = p.detach().clone()
        states = [self.state[p] for p in params]
        x0 = [st["x0"] for st in states] if momentum else []
        return [st["grad_sum_sq"] for st in states], [st["s"] for st in states], x0

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """One MADGRAD update for every parameter with a gradient."""
        loss = _evaluate(closure)
        for group in self.param_groups:
            params, grads = _grads_of(group, "madgrad_wd")
            if not params:
                continue
            eps, momentum = group["eps"], group["momentum"]
            lr = group["lr"] + eps
            sum_sq, s, x0 = self._state_lists(params, momentum)
            k = self.state[params[0]]["step"]
            lamb = lr * math.sqrt(k + 1)
            if group["weight_decay"]:
                torch._foreach_mul_(params, 1.0 - lr * group["weight_decay"])
            if not momentum:  # recover x0 from p = x0 - s / rms before s and v change
                rms = torch._foreach_add(torch._foreach_pow(sum_sq, 1.0 / 3.0), eps)
                x0 = torch._foreach_addcdiv(params, s, rms)
            torch._foreach_addcmul_(sum_sq, grads, grads, value=lamb)
            torch._foreach_add_(s, grads, alpha=lamb)
            rms = torch._foreach_add(torch._foreach_pow(sum_sq, 1.0 / 3.0), eps)
            z = torch._foreach_addcdiv(x0, s, rms, value=-1.0)
            torch._foreach_lerp_(params, z, 1.0 - momentum)
            for p in params:
                self.state[p]["step"] = k + 1
        return loss


class SM3(torch.optim.Optimizer):
    """SM3 (Anil et al. 2019, arXiv:1901.11150): Adagrad with one accumulator per tensor axis.

    For a tensor of shape (n1, n2) it keeps vectors of n1 and n2 running maxima instead of a
    full second-moment tensor. ``nu = min_i acc_i (+ (1 - beta) g^2, after beta nu)``; each
    ``acc_i`` becomes the max of ``nu`` over the other axes; ``p -= lr g / sqrt(nu + eps)``
    (with optional momentum on the update). Dense gradients only; no weight decay, as GPT-NeoX.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 0.1,
        momentum: float = 0.0,
        beta: float = 0.0,
        eps: float = 1e-30,
    ) -> None:
        if lr < 0 or not 0.0 <= momentum < 1.0 or not 0.0 <= beta < 1.0 or eps < 0:
            raise OptimizerError(f"sm3: need lr >= 0, momentum and beta in [0, 1), eps >= 0; "
                                 f"got lr={lr}, momentum={momentum}, beta={beta}, eps={eps}")
        super().__init__(params, {"lr": lr, "momentum": momentum, "beta": beta, "eps": eps})

    def _accumulators(self, p: torch.Tensor) -> list[torch.Tensor]:
        st = self.state[p]
        if "acc" not in st:
            shapes = [[1] * i + [n] + [1] * (p.dim() - 1 - i) for i, n in enumerate(p.shape)]
            st["acc"] = [torch.zeros(s, dtype=p.dtype, device=p.device) for s in shapes or [[]]]
        return st["acc"]

    def _update(self, p: torch.Tensor, grad: torch.Tensor, group: dict[str, Any]) -> torch.Tensor:
        acc, beta = self._accumulators(p), group["beta"]
        nu = acc[0]
        for a in acc[1:]:
            nu = torch.minimum(nu, a)  # broadcasts the per-axis vectors to the full shape
        if beta:
            nu = nu * beta
        nu = grad * grad * (1.0 - beta) + nu  # beta 0: Adagrad-like sum of the axis bounds
        for i, a in enumerate(acc):
            dims = [d for d in range(nu.dim()) if d != i]
            reduced = nu.amax(dim=dims, keepdim=True) if dims else nu
            a.copy_(torch.maximum(a, reduced) if beta else reduced)
        return grad / (nu + group["eps"]).sqrt()

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """One SM3 update for every parameter with a gradient."""
        loss = _evaluate(closure)
        for group in self.param_groups:
            params, grads = _grads_of(group, "sm3")
            for p, grad in zip(params, grads, strict=True):
                update = self._update(p, grad, group)
                if group["momentum"]:
                    # GPT-NeoX's buffer starts at 0: the first update is (1 - momentum) u
                    buf = self.state[p].get("momentum_buffer", torch.zeros_like(update))
                    update = update.lerp(buf, group["momentum"])
                    self.state[p]["momentum_buffer"] = update
                p.add_(update, alpha=-group["lr"])
        return loss
