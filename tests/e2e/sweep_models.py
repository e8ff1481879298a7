"""The tiny models of the option sweep, generated from the model registries.

Every value of every architecture option appears in at least one model, and every pair of
positional embedding x residual style has its own model. Rather than one model per value
(about 60 models), the options are dealt round-robin over a grid: model ``i`` of the
pos_emb x residual grid also takes value ``i % len(values)`` of each other option, and the
grid grows when an option list is longer than it. A new registry entry therefore lands in
some model automatically, and ``coverage`` proves that nothing was left out.

Each model is a dict of GPT-NeoX config keys, laid over ``BASE`` when the worker builds its
``NeoXArgs``; ``layout`` picks TP=2 or DP=2 for the 2-process run.
"""

from __future__ import annotations

from typing import Any

from megatron.model.activations import ACTIVATIONS
from megatron.model.block import LAYER_TYPES
from megatron.model.init import INIT_METHODS
from megatron.model.norms import NORMS
from megatron.model.positional import POSITIONAL
from megatron.model.spec import TRANSFORMER_ATTENTION

HEADS = 4
VOCAB = 64
"""Padded vocabulary of the synthetic corpus (tokens 0..63)."""
SEQ = 32
STEPS = 20

RESIDUALS: dict[str, dict[str, bool]] = {
    "sequential": {"gpt_j_residual": False, "gpt_j_tied": False},
    "gpt_j_residual": {"gpt_j_residual": True, "gpt_j_tied": False},
    "gpt_j_tied": {"gpt_j_residual": True, "gpt_j_tied": True},
}
KV_HEADS: dict[str, int | None] = {"mha": None, "gqa": 2, "mqa": 1}
"""Key/value heads for 4 query heads: one each, two groups, one shared."""
LAYOUTS: dict[str, dict[str, Any]] = {
    "tp2": {"model_parallel_size": 2},
    "dp2": {"model_parallel_size": 1},
}

OVERRIDES: dict[tuple[str, str], dict[str, Any]] = {
    # GPT-NeoX adds the unscaled sinusoid table (norm sqrt(h / 2) = 4 here) to token
    # embeddings of norm 0.02 * sqrt(h) = 0.11, so with std-0.02 embeddings the tokens are
    # drowned out and the loss stays flat for well over 20 steps (measured: 4.17 -> 4.15).
    # Orthogonal init gives embedding rows of norm ~1.4, which learns within 20 steps.
    ("pos_emb", "sinusoidal"): {"init_method": "orthogonal"},
}
"""Option values that fix another option, for models that would not learn in 20 steps."""

BASE: dict[str, Any] = {
    "num_layers": 2,
    "hidden_size": 32,
    # Gated units get int(96 * 2 / 3) = 64 = 2 x 32; the default 4h = 128 gives 85 / 42,
    # which GPT-NeoX's sizing rule cannot split evenly (ModelSpecError).
    "intermediate_size": 96,
    "num_attention_heads": HEADS,
    "seq_length": SEQ,
    "max_position_embeddings": SEQ,
    "padded_vocab_size": VOCAB,
    "tokenizer_type": "CharLevelTokenizer",
    "hidden_dropout": 0.0,
    "attention_dropout": 0.0,
    "train_micro_batch_size_per_gpu": 16,
    "gradient_accumulation_steps": 1,
    "train_iters": STEPS,
    "optimizer": {"type": "Adam", "params": {"lr": 2.0e-2, "betas": [0.9, 0.95], "eps": 1.0e-8}},
    "lr_decay_style": "constant",
    "warmup": 0.0,
    "weight_decay": 0.0,
    "gradient_clipping": 1.0,
    "precision": "fp32",
    "distributed_backend": "gloo",
    # Read by engine.init_distributed; the test's process group already exists, so unused.
    "master_addr": "127.0.0.1",
    "master_port": 29500,
    "seed": 1234,
    "pipe_parallel_size": 0,
    "zero_optimization": {"stage": 0},
}


def option_values() -> dict[str, list[Any]]:
    """Each swept option and every value it takes, read from the registries where one exists.

    ``attention`` values are GPT-NeoX ``attention_config`` layer types; ``bias_off`` names
    which ``use_bias_in_*`` key a model switches off ("" keeps them all on).
    """
    return {
        "norm": NORMS.keys(),
        "activation": ACTIVATIONS.keys(),
        "init_method": INIT_METHODS.keys(),
        "output_layer_init_method": list(reversed(INIT_METHODS.keys())),
        "attention": list(TRANSFORMER_ATTENTION),
        "kv_heads": list(KV_HEADS),
        "tied": [True, False],
        "use_qk_layernorm": [False, True],
        "bias_off": ["", "use_bias_in_norms", "use_bias_in_mlp", "use_bias_in_attn_linear"],
    }


def grid() -> list[tuple[str, str]]:
    """Every (pos_emb, residual) pair."""
    return [(pos, res) for pos in POSITIONAL.keys() for res in RESIDUALS]


def _layout(index: int) -> str:
    # Consecutive models alternate layouts, and the parity flips every 6 models, so every
    # pos_emb and every residual style (3 consecutive grid rows, and every 3rd row) runs
    # under both TP=2 and DP=2.
    return "tp2" if (index + index // 6) % 2 == 0 else "dp2"


def _kv_heads(index: int, layout: str) -> str:
    # MQA's single key/value head cannot be split over 2 ranks: TP models deal from the rest.
    values = [k for k in KV_HEADS if layout == "dp2" or KV_HEADS[k] != 1]
    return values[(index // 2) % len(values)]


def describe(index: int) -> dict[str, Any]:
    """The option values of model ``index`` (pair from the grid, others round-robin)."""
    pairs, options = grid(), option_values()
    pos, res = pairs[index % len(pairs)]
    layout = _layout(index)
    chosen: dict[str, Any] = {"pos_emb": pos, "residual": res, "layout": layout}
    for j, (name, values) in enumerate(options.items()):
        # Each full cycle through the values starts one (j + 1) step further on, so options
        # with lists of equal length do not always travel together.
        chosen[name] = values[(index + (index // len(values)) * (j + 1)) % len(values)]
    chosen["kv_heads"] = _kv_heads(index, layout)
    for (option, value), fixed in OVERRIDES.items():
        if chosen[option] == value:
            chosen.update(fixed)
    return chosen


def to_config(chosen: dict[str, Any]) -> dict[str, Any]:
    """GPT-NeoX config keys for one described model (laid over ``BASE``)."""
    config = dict(BASE, **RESIDUALS[chosen["residual"]], **LAYOUTS[chosen["layout"]])
    config.update(
        pos_emb=chosen["pos_emb"], norm=chosen["norm"], activation=chosen["activation"],
        init_method=chosen["init_method"],
        output_layer_init_method=chosen["output_layer_init_method"],
        num_kv_heads=KV_HEADS[chosen["kv_heads"]], no_weight_tying=not chosen["tied"],
        use_qk_layernorm=chosen["use_qk_layernorm"],
        # The swept type on the first block, global on the second: mixed stacks are legal.
        attention_config=[chosen["attention"], "global"],
    )
    if chosen["attention"] == "local":
        config["sliding_window_width"] = 8  # far below seq 32, so the window really cuts
    if chosen["bias_off"]:
        config[chosen["bias_off"]] = False
    return config


def models() -> list[dict[str, Any]]:
    """Every model of the sweep, as option descriptions."""
    count = max([len(grid())] + [len(v) for v in option_values().values()])
    return [describe(i) for i in range(count)]


def coverage(described: list[dict[str, Any]]) -> dict[str, dict[str, list[int]]]:
    """Option -> value -> indices of the models using it (values as strings)."""
    table: dict[str, dict[str, list[int]]] = {}
    for index, chosen in enumerate(described):
        for name, value in chosen.items():
            table.setdefault(name, {}).setdefault(str(value), []).append(index)
    return table


def expected_values() -> dict[str, list[str]]:
    """What ``coverage`` must contain: every registry key and every listed value."""
    expected = {name: [str(v) for v in values] for name, values in option_values().items()}
    expected["pos_emb"] = POSITIONAL.keys()
    expected["residual"] = list(RESIDUALS)
    expected["layout"] = list(LAYOUTS)
    return expected


def layer_types() -> list[str]:
    """Registered block types; the sweep's blocks are all 'transformer'."""
    return LAYER_TYPES.keys()
