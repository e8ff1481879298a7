"""Model group: architecture keys (sizes, norms, positions, attention, MLP, init, fusions)."""

from dataclasses import dataclass
from typing import Any, Literal

InitMethod = Literal[
    "normal",
    "scaled_normal",
    "orthogonal",
    "scaled_orthogonal",
    "xavier_uniform",
    "xavier_normal",
    "wang_init",
    "small_init",
    "single_residual_scaled_normal",
]


@dataclass(frozen=True, kw_only=True)
class ModelArgs:
    """What the network looks like; `ModelSpec.from_args` is the only reader of these names."""

    precision: Literal["fp16", "fp32", "bf16"] | None = None
    """Derived from the fp16/bf16 dicts when not given ('bfloat16' is read as 'bf16')."""

    num_layers: int | None = None
    """Number of transformer blocks (required for training)."""

    hidden_size: int | None = None
    """Width of the residual stream (required for training)."""

    intermediate_size: int | None = None
    """MLP inner width; None means expansion_factor * hidden_size (rounded for gated MLPs)."""

    mlp_multiple_of: int = 1
    """Round a derived MLP inner width up to a multiple of this."""

    expansion_factor: float | None = None
    """MLP inner width as a multiple of hidden_size when intermediate_size is not given."""

    num_attention_heads: int | None = None
    """Number of query heads (required for training)."""

    num_kv_heads: int | None = None
    """Key/value heads for grouped-query attention; None means one per query head."""

    seq_length: int | None = None
    """Tokens per training sample (required for training)."""

    sliding_window_width: int | None = None
    """Attend only to this many previous tokens (Mistral style); None is full causal."""

    max_position_embeddings: int | None = None
    """Longest sequence the position encoding supports (required for training)."""

    norm: Literal[
        "layernorm", "rmsnorm", "non_parametric_layernorm", "scalenorm", "te_rmsnorm",
        "te_layernorm",
    ] = "layernorm"
    """Normalisation layer used in every block and before the output layer."""

    layernorm_fusion: bool = False
    """Use a fused LayerNorm kernel (speed only)."""

    rmsnorm_fusion: bool = False
    """Use a fused RMSNorm kernel (speed only)."""

    use_qk_layernorm: bool = False
    """Normalise queries and keys before attention."""

    layernorm_epsilon: float = 1.0e-5
    """Epsilon of LayerNorm."""

    rms_norm_epsilon: float = 1.0e-8
    """Epsilon of RMSNorm."""

    scalenorm_epsilon: float = 1.0e-8
    """Epsilon of ScaleNorm."""

    pos_emb: Literal["learned", "rotary", "sinusoidal", "rpe", "alibi", "none"] = "learned"
    """Position encoding: learned table, rotary, sinusoidal, T5 relative bias, ALiBi, or none."""

    rpe_num_buckets: int = 32
    """T5 relative position bias: number of buckets."""

    rpe_max_distance: int = 128
    """T5 relative position bias: largest distance told apart."""

    opt_pos_emb_offset: int = 0
    """Offset into the learned position table (OPT checkpoints use 2)."""

    no_weight_tying: bool = False
    """Give the output layer its own weights instead of sharing the input embedding."""

    attention_config: list[Any] | None = None
    """Attention type per layer, as [[[types], repeat], ...]; derived to one string per layer."""

    sparsity_config: dict[str, Any] | None = None
    """DeepSpeed sparse-attention settings for the sparse attention types."""

    num_unique_layers: int | None = None
    """Share weights so that only this many distinct blocks exist."""

    param_sharing_style: str = "grouped"
    """Order of shared blocks: 'grouped' (1,2,1,2) or 'spaced' (1,1,2,2)."""

    make_vocab_size_divisible_by: int = 128
    """Pad the vocabulary to a multiple of this times model_parallel_size."""

    activation: Literal[
        "gelu", "geglu", "relu", "softsign", "swish", "mish", "silu", "reglu", "swiglu",
        "bilinear", "glu",
    ] = "gelu"
    """MLP activation; the *glu names (and glu, bilinear) make the MLP gated."""

    scaled_upper_triang_masked_softmax_fusion: bool = False
    """Fused causal scale-mask-softmax kernel (speed only)."""

    scaled_masked_softmax_fusion: bool = False
    """Fused general scale-mask-softmax kernel (speed only)."""

    bias_gelu_fusion: bool = False
    """Fused bias-add plus GeLU kernel (speed only)."""

    bias_dropout_fusion: bool = False
    """Fused bias-add plus dropout plus residual kernel (speed only)."""

    rope_fusion: bool = False
    """Fused rotary-embedding kernel (speed only)."""

    fp16_lm_cross_entropy: bool = False
    """Compute the output cross entropy in fp16 instead of fp32."""

    init_method_std: float = 0.02
    """Standard deviation of the normal weight initialisation."""

    apply_query_key_layer_scaling: bool = False
    """Scale attention scores by 1/layer_number (forces softmax in fp32)."""

    use_cpu_initialization: bool = False
    """Initialise tensor-parallel weights on the CPU."""

    attention_softmax_in_fp32: bool = False
    """Run the attention softmax in fp32."""

    rotary_pct: float = 1.0
    """Fraction of each head's dimensions that rotary embedding rotates."""

    rotary_emb_base: int = 10000
    """Base of the rotary frequencies."""

    rotary_save_freqs_buffer: bool = False
    """Save the rotary frequency buffer in checkpoints."""

    init_method: InitMethod = "normal"
    """Initialisation of all weights except the residual output projections."""

    output_layer_init_method: InitMethod = "scaled_normal"
    """Initialisation of the residual output projections (attention dense, MLP out)."""

    gmlp_attn_dim: int = 64
    """Width of the tiny attention inside gMLP blocks."""

    gpt_j_residual: bool = False
    """Parallel residual: x + attn(ln1(x)) + mlp(ln2(x)) instead of two sequential adds."""

    gpt_j_tied: bool = False
    """With gpt_j_residual, use one norm for both attention and MLP."""

    use_bias_in_norms: bool = True
    """Give norms a bias (LayerNorm beta)."""

    use_bias_in_attn_linear: bool = True
    """Give the QKV and attention output projections biases."""

    use_bias_in_mlp: bool = True
    """Give the MLP projections biases."""

    mlp_type: Literal["regular", "llama"] = "regular"
    """Older GPT-NeoX MLP switch; 'llama' derives today's gated activation and width keys."""

    use_flashattn_swiglu: bool = False
    """Use flash-attn's fused SwiGLU kernel (speed only)."""

    soft_prompt_tuning: dict[str, Any] | None = None
    """Train only a learned soft prompt (keys enabled, num_tokens, init_string, init_range)."""

    mamba_selective_scan_fusion: bool = False
    """Mamba layers: fused selective-scan kernel."""

    mamba_causal_conv_fusion: bool = False
    """Mamba layers: fused causal convolution kernel."""

    mamba_inner_func_fusion: bool = False
    """Mamba layers: fuse the whole inner function."""

    mamba_selective_fp32_params: bool = True
    """Mamba layers: keep the selective-scan parameters in fp32."""

    mamba_use_bias_in_conv: bool = True
    """Mamba layers: bias in the convolution."""

    mamba_use_bias_in_linears: bool = False
    """Mamba layers: bias in the linear projections."""

    output_layer_parallelism: Literal["column"] = "column"
    """How the output layer is split over tensor-parallel ranks (over the vocabulary)."""

    dim_att: int | None = None
    """RWKV layers: attention width."""

    head_size: int | None = None
    """RWKV layers: head size."""

    ffn_dim: int | None = None
    """RWKV layers: feed-forward width."""

    te_columnparallel: bool = False
    """Transformer Engine column-parallel linears."""

    te_rowparallel: bool = False
    """Transformer Engine row-parallel linears."""

    te_layernorm_mlp: bool = False
    """Transformer Engine fused LayerNorm-MLP."""

    te_mha: bool = False
    """Transformer Engine multi-head attention."""

    te_fp8_format: Literal["e4m3", "hybrid"] = "hybrid"
    """Transformer Engine FP8 format."""

    te_fp8_wgrad: bool = True
    """Transformer Engine: compute weight gradients in FP8."""

    te_fp8_amax_history_len: int = 1
    """Transformer Engine: length of the amax history window."""

    te_fp8_amax_compute_algo: str = "most_recent"
    """Transformer Engine: how amax is chosen from the history."""

    te_fp8_margin: int = 0
    """Transformer Engine: FP8 scaling margin."""

    te_fp8_mha: bool = False
    """Transformer Engine: FP8 attention."""
