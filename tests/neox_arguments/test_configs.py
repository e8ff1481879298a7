"""Every YAML we ship loads, alone or stacked as documented, with hand-checked numbers."""

from __future__ import annotations

from pathlib import Path

import pytest

from megatron.neox_arguments import NeoXArgs, Resources, unsupported_features

from .conftest import ONE_CPU

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs"
# Overlays add settings to a model config and never load on their own.
OVERLAYS = ("local_setup.yml", "train.yml", "text_generation.yml")
MODEL_CONFIGS = sorted(p for p in CONFIGS.rglob("*.yml") if p.name not in OVERLAYS)
EIGHT_GPUS = Resources(1, 8, True)


def _load(*names: str, resources: Resources = EIGHT_GPUS) -> NeoXArgs:
    return NeoXArgs.from_ymls([str(CONFIGS / n) for n in names], resources=resources)


def test_ladder_is_complete():
    names = {str(p.relative_to(CONFIGS)) for p in MODEL_CONFIGS}
    assert {"19M.yml", "49M.yml", "125M.yml", "350M.yml", "760M.yml", "1-3B.yml", "2-7B.yml",
            "6-7B.yml", "13B.yml", "20B.yml", "pythia/70M.yml", "pythia/160M.yml",
            "llama/7B.yml", "cpu_small.yml"} <= names


# Folders of stand-alone configs that are not stacked with local_setup.yml.
STANDALONE = {"bench"}
STACKED = [p for p in MODEL_CONFIGS if p.parent.name not in STANDALONE]


@pytest.mark.parametrize("path", [p for p in MODEL_CONFIGS if p.parent.name in STANDALONE],
                         ids=lambda p: str(p.relative_to(CONFIGS)))
def test_standalone_configs_load_alone(path):
    args = _load(str(path.relative_to(CONFIGS)))
    assert len(args.attention_config) == args.num_layers
    assert unsupported_features(args) == []


@pytest.mark.parametrize("path", STACKED, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_each_config_loads_stacked_with_local_setup(path):
    extra = ["llama/train.yml"] if path.parent.name == "llama" else []
    args = _load(str(path.relative_to(CONFIGS)), *extra, "local_setup.yml")
    assert args.data_path == "data/shakespeare/shakespeare_text_document"
    assert args.tokenizer_type == "HFTokenizer"
    assert len(args.attention_config) == args.num_layers
    assert unsupported_features(args) == []


@pytest.mark.parametrize("name,params", [
    ("19M.yml", (6, 512, 8)), ("49M.yml", (10, 640, 10)), ("125M.yml", (12, 768, 12)),
    ("350M.yml", (24, 1024, 16)), ("760M.yml", (24, 1536, 16)), ("1-3B.yml", (24, 2048, 16)),
    ("2-7B.yml", (32, 2560, 32)), ("6-7B.yml", (32, 4096, 32)), ("13B.yml", (40, 5120, 40)),
    ("20B.yml", (44, 6144, 64)), ("pythia/70M.yml", (6, 512, 8)),
    ("pythia/160M.yml", (12, 768, 12)),
])
def test_ladder_shapes(name, params):
    args = _load(name, "local_setup.yml")
    assert (args.num_layers, args.hidden_size, args.num_attention_heads) == params


def test_20b_batch_on_96_gpus():
    # pp=4 x tp=2 leaves dp = 96 / 8 = 12; 4 x 32 x 12 = 1536 sequences, GPT-NeoX-20B's batch.
    args = _load("20B.yml", "local_setup.yml", resources=Resources(12, 8, True))
    assert args.train_batch_size == 1536 and args.lr == pytest.approx(0.97e-4)
    assert args.rotary_pct == 0.25 and args.gpt_j_residual


def test_cpu_small_is_the_default_cpu_run():
    args = _load("cpu_small.yml", "local_setup.yml", resources=ONE_CPU)
    assert (args.num_layers, args.hidden_size, args.num_attention_heads, args.seq_length) == (
        4, 256, 4, 256)
    assert (args.train_batch_size, args.train_micro_batch_size_per_gpu,
            args.gradient_accumulation_steps) == (8, 8, 1)
    assert args.precision == "fp32" and args.distributed_backend == "gloo"
    assert args.lr == 1e-3 and args.lr_decay_iters == 200 and args.pos_emb == "rotary"
    assert args.global_num_gpus == 1 and args.pipe_parallel_size == 0
    assert args.deepspeed_config["gradient_clipping"] == 1.0


def test_tiny_fixture():
    args = NeoXArgs.from_ymls([str(ROOT / "tests/fixtures/tiny.yml")], resources=ONE_CPU)
    assert (args.num_layers, args.hidden_size, args.num_attention_heads, args.seq_length) == (
        2, 64, 4, 64)
    assert args.make_vocab_size_divisible_by == 128 and args.train_batch_size == 2


def test_llama_mlp_keys():
    args = _load("llama/7B.yml", "llama/train.yml", "local_setup.yml")
    assert args.activation == "swiglu" and args.intermediate_size == 32768
    assert args.norm == "rmsnorm" and args.rms_norm_epsilon == 1e-6
    assert not (args.use_bias_in_norms or args.use_bias_in_attn_linear or args.use_bias_in_mlp)


def test_legacy_llama_mlp_type_is_translated():
    args = NeoXArgs.from_dict({"num_layers": 2, "hidden_size": 4096, "num_attention_heads": 32,
                               "seq_length": 8, "max_position_embeddings": 8,
                               "train_micro_batch_size_per_gpu": 1, "mlp_type": "llama",
                               "activation": "silu"}, resources=ONE_CPU)
    # LLaMA's width int(2 * 4 * 4096 / 3) = 10922 -> 11008 is what 8h with multiple 256 gives.
    assert (args.activation, args.intermediate_size, args.mlp_multiple_of) == (
        "swiglu", 32768, 256)


LEGACY_MODEL = {"num_layers": 2, "hidden_size": 4096, "num_attention_heads": 32,
                "seq_length": 8, "max_position_embeddings": 8,
                "train_micro_batch_size_per_gpu": 1, "mlp_type": "llama"}


def test_legacy_llama_mlp_keeps_an_explicit_width():
    # Mistral's config: the old LLaMA MLP used intermediate_size 14336 as its gated width;
    # today's rule int(2 * 43008 / 3) // 2 = 14336 with multiple 1 gives the same layers.
    args = NeoXArgs.from_dict({**LEGACY_MODEL, "activation": "silu", "intermediate_size": 14336},
                              resources=ONE_CPU)
    assert (args.activation, args.intermediate_size, args.mlp_multiple_of) == (
        "swiglu", 43008, 1)
    assert args.mlp_type == "regular"


@pytest.mark.parametrize("given,gated", [({}, "geglu"), ({"activation": "gelu"}, "geglu"),
                                         ({"activation": "swish"}, "swiglu"),
                                         ({"activation": "relu"}, "reglu")])
def test_legacy_llama_mlp_gates_with_the_given_activation(given, gated):
    args = NeoXArgs.from_dict({**LEGACY_MODEL, **given}, resources=ONE_CPU)
    assert args.activation == gated


def test_text_generation_overlay_stacks_after_a_model():
    args = _load("125M.yml", "local_setup.yml", "text_generation.yml")
    assert (args.text_gen_type, args.maximum_tokens, args.num_samples) == (
        "unconditional", 102, 10)
    assert (args.temperature, args.top_p, args.top_k, args.recompute) == (1.0, 0.0, 0, False)
    assert args.sample_input_file == "sample_input.txt" and args.prompt_end == "\n"


def test_cpu_warns_for_gpu_configs(caplog):
    args = _load("pythia/70M.yml", "local_setup.yml", resources=Resources(1, 1, False))
    assert args.precision == "bf16" and args.attention_config == ["global"] * 6
    assert args.distributed_backend == "gloo"
    assert len([r for r in caplog.records if r.levelname == "WARNING"]) == 3
