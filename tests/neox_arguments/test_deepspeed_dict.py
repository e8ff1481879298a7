"""The DeepSpeed dict holds every DeepSpeed key that is set, unchanged."""

from __future__ import annotations

import pytest

from megatron.neox_arguments import NeoXArgs

from .conftest import EIGHT_GPUS, MINIMAL, minimal_yaml

DS_YAML = """
gradient_clipping: 1.0
optimizer: {type: Adam, params: {lr: 6e-4, betas: [0.9, 0.95], eps: 1e-8}}
scheduler: {type: WarmupLR, params: {warmup_num_steps: 10}}
fp16: {enabled: true, loss_scale: 0, loss_scale_window: 1000, hysteresis: 2, min_loss_scale: 1}
zero_optimization: {stage: 1, allgather_partitions: true, reduce_bucket_size: 5e8,
                    overlap_comm: true, contiguous_gradients: true, cpu_offload: false}
steps_per_print: 7
wall_clock_breakdown: true
prescale_gradients: true
gradient_predivide_factor: 2.0
sparse_gradients: true
flops_profiler: {enabled: true, profile_step: 3}
communication_data_type: fp32
activation_checkpointing: {partition_activations: true}
checkpoint: {tag_validation: Warn}
data_types: {grad_accum_dtype: fp32}
wandb: {enabled: false}
"""

EXPECTED = {
    "gradient_clipping": 1.0,
    "optimizer": {"type": "Adam", "params": {"lr": 6e-4, "betas": [0.9, 0.95], "eps": 1e-8}},
    "scheduler": {"type": "WarmupLR", "params": {"warmup_num_steps": 10}},
    "fp16": {"enabled": True, "loss_scale": 0, "loss_scale_window": 1000, "hysteresis": 2,
             "min_loss_scale": 1},
    "zero_optimization": {"stage": 1, "allgather_partitions": True,
                          "reduce_bucket_size": 500000000, "overlap_comm": True,
                          "contiguous_gradients": True, "cpu_offload": False},
    "steps_per_print": 7,
    "wall_clock_breakdown": True,
    "prescale_gradients": True,
    "gradient_predivide_factor": 2.0,
    "sparse_gradients": True,
    "flops_profiler": {"enabled": True, "profile_step": 3},
    "communication_data_type": "fp32",
    "activation_checkpointing": {"partition_activations": True},
    "checkpoint": {"tag_validation": "Warn"},
    "data_types": {"grad_accum_dtype": "fp32"},
    "wandb": {"enabled": False},
}


@pytest.fixture
def args(write) -> NeoXArgs:
    return NeoXArgs.from_ymls([write("m.yml", minimal_yaml()), write("ds.yml", DS_YAML)],
                              resources=EIGHT_GPUS)


def test_each_key_set_in_yaml_reaches_the_dict_unchanged(args):
    config = args.deepspeed_config
    for key, value in EXPECTED.items():
        assert config[key] == value, key


def test_derived_batch_keys_are_present(args):
    config = args.deepspeed_config
    assert (config["train_batch_size"], config["train_micro_batch_size_per_gpu"],
            config["gradient_accumulation_steps"]) == (16, 2, 1)


def test_gradient_clipping_one_is_kept():
    args = NeoXArgs.from_dict({**MINIMAL, "gradient_clipping": 1.0}, resources=EIGHT_GPUS)
    assert args.deepspeed_config["gradient_clipping"] == 1.0


def test_neox_only_keys_never_reach_deepspeed(args):
    config = args.deepspeed_config
    for key in ("deepspeed", "fp32_allreduce", "curriculum_seqlen", "deepspeed_extra_args",
                "hidden_size", "lr", "precision"):
        assert key not in config


def test_extra_args_merge_on_top():
    args = NeoXArgs.from_dict({**MINIMAL, "steps_per_print": 5,
                               "deepspeed_extra_args": {"steps_per_print": 1, "seed": 3}},
                              resources=EIGHT_GPUS)
    assert args.deepspeed_config["steps_per_print"] == 1
    assert args.deepspeed_config["seed"] == 3


def test_precision_key_produces_dict():
    args = NeoXArgs.from_dict({**MINIMAL, "precision": "bfloat16"}, resources=EIGHT_GPUS)
    assert args.precision == "bf16" and args.deepspeed_config["bf16"] == {"enabled": True}
    assert "fp16" not in args.deepspeed_config


def test_dict_is_a_copy(args):
    args.deepspeed_config["optimizer"]["params"]["lr"] = 1.0
    assert args.deepspeed_config["optimizer"]["params"]["lr"] == 6e-4


def test_sparse_gradients_off_is_left_out_and_on_is_kept():
    # DeepSpeed 0.19 raises on the key even when false; a GPT-NeoX config may spell it out.
    off = NeoXArgs.from_dict({**MINIMAL, "sparse_gradients": False}, resources=EIGHT_GPUS)
    on = NeoXArgs.from_dict({**MINIMAL, "sparse_gradients": True}, resources=EIGHT_GPUS)
    assert "sparse_gradients" not in off.deepspeed_config
    assert on.deepspeed_config["sparse_gradients"] is True
