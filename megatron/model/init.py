"""Layout-independent initialisation (``INIT_METHODS`` and ``initialize_layer``).

Every parameter's FULL tensor is drawn from a generator seeded by ``(seed, name)``, where
``name`` is the GPT-NeoX checkpoint name ``sequential.<layer>.<param>``; then this rank keeps
its tensor-parallel slice. So TP=1 and TP=2 (or any pipeline split) hold identical full
weights, and any layout can resume from or export to any other.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable

import torch
from torch import nn

from megatron.model.registry import Registry
from megatron.model.spec import ModelSpec
from megatron.parallel.groups import Group

InitFn = Callable[[torch.Tensor, ModelSpec, torch.Generator], None]
INIT_METHODS: Registry[InitFn] = Registry("init_method")


def _normal(std: Callable[[ModelSpec], float]) -> InitFn:
    def init(t: torch.Tensor, spec: ModelSpec, gen: torch.Generator) -> None:
        nn.init.normal_(t, mean=0.0, std=std(spec), generator=gen)

    return init


def _orthogonal(gain: Callable[[ModelSpec], float]) -> InitFn:
    """(Semi-)orthogonal rows or columns from a QR of a Gaussian matrix, times ``gain``."""

    def init(t: torch.Tensor, spec: ModelSpec, gen: torch.Generator) -> None:
        rows, cols = t.shape[0], t.numel() // t.shape[0]
        flat = torch.randn(rows, cols, generator=gen)
        if rows < cols:
            flat = flat.t()
        q, r = torch.linalg.qr(flat)
        q = q * torch.diagonal(r).sign()  # make the distribution uniform (Mezzadri)
        if rows < cols:
            q = q.t()
        t.copy_(q.reshape(t.shape) * gain(spec))

    return init


def _xavier(kind: str) -> InitFn:
    fn = nn.init.xavier_uniform_ if kind == "uniform" else nn.init.xavier_normal_

    def init(t: torch.Tensor, spec: ModelSpec, gen: torch.Generator) -> None:
        fn(t, generator=gen)

    return init


# std / gain formulas as GPT-NeoX defines them (sigma = init_method_std, L = num_layers).
INIT_METHODS.register("normal")(_normal(lambda s: s.init_method_std))
INIT_METHODS.register("scaled_normal")(
    _normal(lambda s: s.init_method_std / math.sqrt(2.0 * s.num_layers)))
INIT_METHODS.register("single_residual_scaled_normal")(
    _normal(lambda s: s.init_method_std / math.sqrt(s.num_layers)))
INIT_METHODS.register("wang_init")(
    _normal(lambda s: 2.0 / s.num_layers / math.sqrt(s.hidden_size)))
INIT_METHODS.register("small_init")(_normal(lambda s: math.sqrt(2.0 / (5 * s.hidden_size))))
# GPT-NeoX's plain "orthogonal" ends up with n_layers = 1, i.e. gain sqrt(2).
INIT_METHODS.register("orthogonal")(_orthogonal(lambda s: math.sqrt(2.0)))
INIT_METHODS.register("scaled_orthogonal")(_orthogonal(lambda s: math.sqrt(2.0 / s.num_layers)))
INIT_METHODS.register("xavier_uniform")(_xavier("uniform"))
INIT_METHODS.register("xavier_normal")(_xavier("normal"))

# Parameters written through the output-layer init (they feed the residual stream).
_OUTPUT_LAYER_PARAMS = ("attention.dense.weight", "mlp.linear2.weight")
_ONES = ("weight", "scale", "g")


def param_seed(seed: int, name: str) -> int:
    """A generator seed that depends only on the run seed and the parameter's full name."""
    return (seed * 1_000_003 + zlib.crc32(name.encode())) % (2**63)


def _fill_full(full: torch.Tensor, local_name: str, spec: ModelSpec,
               gen: torch.Generator) -> None:
    leaf = local_name.rsplit(".", 1)[-1]
    if leaf in ("bias", "offset"):
        full.zero_()
    elif "norm" in local_name and leaf in _ONES:
        full.fill_(1.0)
    elif local_name.endswith(_OUTPUT_LAYER_PARAMS):
        INIT_METHODS.get(spec.output_layer_init_method)(full, spec, gen)
    else:
        INIT_METHODS.get(spec.init_method)(full, spec, gen)


def full_shape(param: torch.Tensor, tp: Group) -> tuple[int, ...]:
    """Shape of the unsharded tensor behind ``param``."""
    dim = getattr(param, "tp_dim", None)
    shape = list(param.shape)
    if dim is not None:
        shape[dim] *= tp.size
    return tuple(shape)


def take_shard(full: torch.Tensor, param: torch.Tensor, tp: Group) -> torch.Tensor:
    """This rank's slice of ``full``, honouring ``tp_sections`` (see ``mark_sections``).

    Without sections the rank takes a contiguous block along ``tp_dim``. With sections
    (fused QKV under GQA, gated linear1) each section is split and the rank's blocks are
    concatenated, which is the per-rank layout GPT-NeoX uses.
    """
    dim = getattr(param, "tp_dim", None)
    if dim is None or tp.size == 1:
        return full
    sections = getattr(param, "tp_sections", None) or [full.shape[dim]]
    parts = [part.chunk(tp.size, dim=dim)[tp.rank] for part in full.split(sections, dim=dim)]
    return torch.cat(parts, dim=dim)


def mark_sections(param: torch.Tensor, sections: list[int]) -> None:
    """Record that the full tensor is a concatenation of independently sharded sections."""
    param.tp_sections = sections  # type: ignore[attr-defined]


@torch.no_grad()
def initialize_layer(layer: nn.Module, index: int, spec: ModelSpec, seed: int,
                     tp: Group) -> None:
    """Fill every parameter of GPT-NeoX layer ``index`` from ``(seed, full name)``."""
    for local_name, param in layer.named_parameters():
        name = f"sequential.{index}.{local_name}"
        gen = torch.Generator().manual_seed(param_seed(seed, name))
        full = torch.empty(full_shape(param, tp), dtype=torch.float32)
        _fill_full(full, local_name, spec, gen)
        param.copy_(take_shard(full, param, tp).to(param.dtype))


def join_shards(shards: list[torch.Tensor], param: torch.Tensor) -> torch.Tensor:
    """Inverse of ``take_shard``: the full tensor from every rank's shard, in rank order."""
    dim = getattr(param, "tp_dim", None)
    if dim is None or len(shards) == 1:
        return shards[0]
    full_sections = getattr(param, "tp_sections", None)
    if not full_sections:
        return torch.cat(shards, dim=dim)
    local_sections = [size // len(shards) for size in full_sections]
    per_rank = [s.split(local_sections, dim=dim) for s in shards]  # [rank][section]
    parts = [torch.cat([r[i] for r in per_rank], dim=dim) for i in range(len(full_sections))]
    return torch.cat(parts, dim=dim)


def gather_full_parameter(param: torch.Tensor, tp: Group,
                          local: torch.Tensor | None = None) -> torch.Tensor:
    """The full tensor behind ``param`` (a collective over ``tp``; not differentiable).

    Args:
        param: a model parameter carrying its sharding attributes.
        tp: tensor-parallel group.
        local: a tensor sharded like ``param`` (e.g. its gradient); defaults to ``param``.
    """
    from megatron.parallel.mappings import gather_along

    local = (param if local is None else local).detach()
    dim = getattr(param, "tp_dim", None)
    if dim is None or tp.size == 1:
        return local
    stacked = gather_along(local, dim, tp)  # rank shards concatenated along dim
    return join_shards(list(stacked.chunk(tp.size, dim=dim)), param)
