"""``ModelSpec``: everything the GPT model needs, and the one mapping from GPT-NeoX keys.

``ModelSpec.from_args`` is the only place in the code base that knows GPT-NeoX's key names
for the model (eps by norm type, rotary dims from ``rotary_pct``, per-layer attention types,
the gated-MLP sizing rule). Everything below it (layers, init, FLOPs, the HF converter) reads
the spec. Tests build tiny specs directly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from megatron.model.activations import ACTIVATIONS
from megatron.model.errors import ModelSpecError

# GPT-NeoX eps key per norm type: each norm reads its own epsilon.
_EPS_KEY = {
    "layernorm": "layernorm_epsilon",
    "non_parametric_layernorm": "layernorm_epsilon",
    "rmsnorm": "rms_norm_epsilon",
    "scalenorm": "scalenorm_epsilon",
    "te_layernorm": "layernorm_epsilon",
    "te_rmsnorm": "rms_norm_epsilon",
}
_EPS_DEFAULT = {"layernorm_epsilon": 1e-5, "rms_norm_epsilon": 1e-8, "scalenorm_epsilon": 1e-8}
# Layer types in attention_config that are a transformer block, and the kernel each asks for.
TRANSFORMER_ATTENTION = ("global", "local", "flash")


@dataclass(frozen=True, kw_only=True)
class ModelSpec:
    """The architecture of a GPT-NeoX-style decoder, independent of any parallel layout."""

    hidden_size: int
    num_layers: int
    num_attention_heads: int
    padded_vocab_size: int
    num_kv_heads: int | None = None
    """Key/value heads for GQA/MQA; None means one per query head (plain multi-head)."""
    seq_length: int = 2048
    max_position_embeddings: int | None = None
    pos_emb: str = "learned"
    rotary_pct: float = 1.0
    rotary_emb_base: float = 10000.0
    rpe_num_buckets: int = 32
    rpe_max_distance: int = 128
    norm: str = "layernorm"
    norm_eps: float = 1e-5
    use_bias_in_norms: bool = True
    activation: str = "gelu"
    intermediate_size: int | None = None
    """Width after the activation (linear2's input); linear1 is twice this when gated.
    None means 4 * hidden_size."""
    use_bias_in_mlp: bool = True
    use_bias_in_attn_linear: bool = True
    use_qk_layernorm: bool = False
    apply_query_key_layer_scaling: bool = False
    attention_softmax_in_fp32: bool = False
    attention_config: tuple[str, ...] = field(default_factory=tuple)
    """Per-layer attention type (global/local/flash); empty means all global."""
    attention_kernel: str = "sdpa"
    """Kernel used by 'global' layers ('local' layers use it with a window)."""
    sliding_window_width: int | None = None
    gpt_j_residual: bool = False
    gpt_j_tied: bool = False
    tie_word_embeddings: bool = True
    hidden_dropout: float = 0.0
    attention_dropout: float = 0.0
    init_method: str = "normal"
    output_layer_init_method: str = "scaled_normal"
    init_method_std: float = 0.02
    sequence_parallel: bool = False
    attention_scale: float | None = None
    """Softmax scale of q.k; None means 1/sqrt(head_dim) (muP: 1/(head_dim * mup_attn_temp))."""
    embedding_mult: float = 1.0
    """Multiplier on the embedding output (muP's ``mup_embedding_mult``)."""
    output_mult: float = 1.0
    """Multiplier on the logits, applied to the final norm's output (muP: 1/(mup_output_temp *
    width_mult); ``megatron.training.mup`` folds in the width multiplier)."""

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_attention_heads != 0:
            raise ModelSpecError(
                f"hidden_size = {self.hidden_size} is not divisible by num_attention_heads = "
                f"{self.num_attention_heads}")
        if self.num_attention_heads % self.kv_heads != 0:
            raise ModelSpecError(
                f"num_attention_heads = {self.num_attention_heads} is not a multiple of "
                f"num_kv_heads = {self.kv_heads}")
        if self.attention_config and len(self.attention_config) != self.num_layers:
            raise ModelSpecError(
                f"attention_config has {len(self.attention_config)} entries; expected one per "
                f"layer (num_layers = {self.num_layers})")
        for kind in self.attention_config:
            if kind not in TRANSFORMER_ATTENTION:
                raise ModelSpecError(f"attention_config type '{kind}' is not supported; "
                                     f"expected one of {list(TRANSFORMER_ATTENTION)}")
        if self.pos_emb == "rotary" and self.rotary_dims % 2:
            raise ModelSpecError(
                f"rotary_pct = {self.rotary_pct} rotates {self.rotary_dims} of {self.head_dim} "
                "channels per head; rotary needs an even number (pairs of channels)")
        ACTIVATIONS.get(self.activation)  # fail early with the list of valid names

    @property
    def head_dim(self) -> int:
        """Channels per attention head."""
        return self.hidden_size // self.num_attention_heads

    @property
    def kv_heads(self) -> int:
        """Number of key/value heads (equal to the query heads without GQA)."""
        return self.num_kv_heads or self.num_attention_heads

    @property
    def gqa(self) -> bool:
        """True when K/V have fewer heads than Q (GPT-NeoX then changes the QKV row layout)."""
        return self.kv_heads != self.num_attention_heads

    @property
    def rotary_dims(self) -> int:
        """Channels of each head that rotary rotates (the first ``rotary_pct`` of the head)."""
        if self.rotary_pct >= 1:
            return self.head_dim
        return int(self.head_dim * self.rotary_pct)

    @property
    def gated(self) -> bool:
        """Whether the activation is a gated linear unit (linear1 produces two halves)."""
        return ACTIVATIONS.get(self.activation).gated

    @property
    def mlp_width(self) -> int:
        """The activated MLP width (linear2's input features)."""
        return self.intermediate_size or 4 * self.hidden_size

    @property
    def linear1_width(self) -> int:
        """Output features of mlp.linear1."""
        return self.mlp_width * (2 if self.gated else 1)

    @property
    def max_positions(self) -> int:
        """Rows of the learned position table."""
        return self.max_position_embeddings or self.seq_length

    def layer_attention(self, layer: int) -> str:
        """Attention type of block ``layer`` (0-based)."""
        return self.attention_config[layer] if self.attention_config else "global"

    @classmethod
    def from_args(cls, args: Any, padded_vocab_size: int | None = None) -> ModelSpec:
        """Build a spec from GPT-NeoX-named attributes (a ``NeoXArgs`` or any namespace).

        Args:
            args: object with GPT-NeoX attribute names (read with defaults when absent).
            padded_vocab_size: overrides ``args.padded_vocab_size`` (the worker computes it
                from the tokenizer when the config leaves it unset).

        Raises:
            ModelSpecError: when a value is missing or sizes do not fit together.
        """
        get = _Reader(args)
        vocab = padded_vocab_size or get("padded_vocab_size", None)
        if not vocab:
            raise ModelSpecError("padded_vocab_size is not set; compute it from the tokenizer "
                                 "(megatron.tokenizer.padded_vocab_size) and pass it in")
        _reject_unsupported(get)
        fields: dict[str, Any] = {"padded_vocab_size": vocab}
        for group in (_size_fields, _position_fields, _norm_fields, _mlp_fields,
                      _attention_fields, _block_fields, _mup_fields):
            fields.update(group(get))
        return cls(**fields)


# GPT-NeoX keys this model does not implement, with the value that means "off".
_UNSUPPORTED = {"opt_pos_emb_offset": 0, "num_unique_layers": None}


def _reject_unsupported(get: _Reader) -> None:
    """Never silently ignore an architecture option: raise when one we lack is switched on."""
    for key, off in _UNSUPPORTED.items():
        value = get(key, off)
        if value != off and not (key == "num_unique_layers" and value == get("num_layers", 0)):
            raise ModelSpecError(f"'{key}' = {value!r} is not supported by this model; "
                                 f"remove it or set it to {off!r}")


def _size_fields(get: _Reader) -> dict[str, Any]:
    return dict(hidden_size=get("hidden_size", None), num_layers=get("num_layers", None),
                num_attention_heads=get("num_attention_heads", None),
                num_kv_heads=get("num_kv_heads", None), seq_length=get("seq_length", 2048),
                max_position_embeddings=get("max_position_embeddings", None))


def _position_fields(get: _Reader) -> dict[str, Any]:
    return dict(pos_emb=get("pos_emb", "learned"), rotary_pct=get("rotary_pct", 1.0),
                rotary_emb_base=get("rotary_emb_base", 10000),
                rpe_num_buckets=get("rpe_num_buckets", 32),
                rpe_max_distance=get("rpe_max_distance", 128))


def _norm_fields(get: _Reader) -> dict[str, Any]:
    """The norm type, and the epsilon from the key GPT-NeoX reads for that type."""
    norm = get("norm", "layernorm")
    if norm not in _EPS_KEY:
        raise ModelSpecError(f"unknown norm '{norm}'; expected one of {sorted(_EPS_KEY)}")
    eps_key = _EPS_KEY[norm]
    return dict(norm=norm, norm_eps=get(eps_key, _EPS_DEFAULT[eps_key]),
                use_bias_in_norms=get("use_bias_in_norms", True),
                use_qk_layernorm=get("use_qk_layernorm", False))


def _mlp_fields(get: _Reader) -> dict[str, Any]:
    activation = get("activation", "gelu")
    width = neox_mlp_width(get("hidden_size", None), ACTIVATIONS.get(activation).gated,
                           get("intermediate_size", None), get("expansion_factor", None),
                           get("mlp_multiple_of", 1))
    return dict(activation=activation, intermediate_size=width,
                use_bias_in_mlp=get("use_bias_in_mlp", True))


def _attention_fields(get: _Reader) -> dict[str, Any]:
    return dict(
        use_bias_in_attn_linear=get("use_bias_in_attn_linear", True),
        apply_query_key_layer_scaling=get("apply_query_key_layer_scaling", False),
        attention_softmax_in_fp32=get("attention_softmax_in_fp32", False),
        attention_config=tuple(get("attention_config", None) or ()),
        attention_kernel=get("attention_kernel", "sdpa"),
        sliding_window_width=get("sliding_window_width", None),
        attention_dropout=get("attention_dropout", 0.0))


def _block_fields(get: _Reader) -> dict[str, Any]:
    return dict(
        gpt_j_residual=get("gpt_j_residual", False), gpt_j_tied=get("gpt_j_tied", False),
        tie_word_embeddings=not get("no_weight_tying", False),
        hidden_dropout=get("hidden_dropout", 0.0), init_method=get("init_method", "normal"),
        output_layer_init_method=get("output_layer_init_method", "scaled_normal"),
        init_method_std=get("init_method_std", 0.02),
        sequence_parallel=get("sequence_parallel", False))


def _mup_fields(get: _Reader) -> dict[str, Any]:
    """muP's multipliers (GPT-NeoX's ``use_mup`` keys); all neutral without ``use_mup``."""
    if not get("use_mup", False):
        return {}
    head_dim = get("hidden_size", 1) // max(1, get("num_attention_heads", 1))
    return dict(
        attention_scale=1.0 / (head_dim * get("mup_attn_temp", 1.0)),
        embedding_mult=get("mup_embedding_mult", 1.0),
        output_mult=1.0 / get("mup_output_temp", 1.0))


class _Reader:
    """``getattr`` with a default, treating None as unset for keys that must be given."""

    def __init__(self, args: Any) -> None:
        self.args = args

    def __call__(self, key: str, default: Any) -> Any:
        value = getattr(self.args, key, None)
        if value is None:
            if default is None and key in ("hidden_size", "num_layers", "num_attention_heads"):
                raise ModelSpecError(f"'{key}' is required to build the model but is not set")
            return default
        return value


def _round_up(value: int, multiple: int) -> int:
    return multiple * math.ceil(value / multiple)


def neox_mlp_width(hidden_size: int, gated: bool, intermediate_size: int | None,
                   expansion_factor: float | None, multiple_of: int = 1) -> int:
    """GPT-NeoX's MLP sizing rule; returns the activated width (linear2's input).

    GPT-NeoX starts from ``intermediate_size``, else ``expansion_factor * h``, else ``4h``.
    For gated units it keeps the parameter count of the ungated MLP: linear1 becomes
    ``int(ffn * 2 / 3)`` and the activated width half of that. linear1 is rounded up to a
    multiple of ``2 * multiple_of`` and linear2's input to a multiple of ``multiple_of``.

    Raises:
        ModelSpecError: when both sizes are given, or the two rounded widths disagree (GPT-NeoX
            would build mismatched layers there).
    """
    if intermediate_size and expansion_factor:
        raise ModelSpecError("set either intermediate_size or expansion_factor, not both "
                             f"(got {intermediate_size} and {expansion_factor})")
    if intermediate_size:
        ffn = int(intermediate_size)
    elif expansion_factor:
        ffn = int(expansion_factor * hidden_size)
    else:
        ffn = 4 * hidden_size
    ffn_in = ffn
    if gated:
        ffn = int(ffn * 2 / 3)
        ffn_in = ffn // 2
    ffn = _round_up(ffn, 2 * multiple_of)
    ffn_in = _round_up(ffn_in, multiple_of)
    if ffn != ffn_in * (2 if gated else 1):
        raise ModelSpecError(
            f"MLP sizes do not fit: linear1 width {ffn} and linear2 input {ffn_in} (from "
            f"intermediate_size={intermediate_size}, expansion_factor={expansion_factor}, "
            f"mlp_multiple_of={multiple_of}); choose values whose rounded widths agree")
    return ffn_in
