"""derive(): batch triad, precision, optimizer, ZeRO, attention layers, CPU substitutions."""

from __future__ import annotations

import logging

import pytest

from megatron.neox_arguments import NeoXArgs, Resources
from megatron.neox_arguments.derive import derive, expand_attention_config

from .conftest import EIGHT_GPUS, MINIMAL, ONE_CPU

TRIAD = ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps")


@pytest.mark.parametrize("given,gpus,pp,tp,expected", [
    # (tbs, micro, accum) given -> (tbs, micro, accum) derived; dp = gpus / (max(pp,1) * tp)
    ((None, 4, None), 8, 0, 1, (32, 4, 1)),
    ((None, 4, 2), 8, 0, 1, (64, 4, 2)),
    ((64, 4, None), 8, 0, 1, (64, 4, 2)),      # GPT-NeoX gets this one wrong
    ((64, None, 2), 8, 0, 1, (64, 4, 2)),
    ((64, None, None), 8, 0, 1, (64, 8, 1)),
    ((64, 4, None), 8, 2, 2, (64, 4, 8)),       # dp = 2
    ((96, 4, None), 8, 1, 4, (96, 4, 12)),      # pp=1 counts as one stage: dp = 2
    ((32, 4, 1), 8, 0, 1, (32, 4, 1)),
])
def test_batch_triad(given, gpus, pp, tp, expected):
    values = {k: v for k, v in zip(TRIAD, given, strict=True) if v is not None}
    values.update(pipe_parallel_size=pp, model_parallel_size=tp)
    out = derive(values, Resources(1, gpus, True))
    assert tuple(out[k] for k in TRIAD) == expected
    assert out["global_num_gpus"] == gpus


def test_batch_triad_leaves_inexact_division_for_validate():
    out = derive({"train_batch_size": 30, "train_micro_batch_size_per_gpu": 4},
                 Resources(1, 2, True))
    assert "gradient_accumulation_steps" not in out


def test_nodes_multiply_gpus():
    out = derive({"train_micro_batch_size_per_gpu": 1}, Resources(3, 4, True))
    assert out["global_num_gpus"] == 12 and out["train_batch_size"] == 12


@pytest.mark.parametrize("values", [
    dict(MINIMAL),
    {**MINIMAL, "fp16": {"enabled": True}, "attention_config": [[["flash", "local"], 1]]},
    {**MINIMAL, "train_batch_size": 64, "optimizer": {"type": "Adam", "params": {"lr": 0.1}}},
    {"precision": "bf16", "train_iters": 100, "lr_decay_fraction": 0.5},
])
@pytest.mark.parametrize("resources", [ONE_CPU, EIGHT_GPUS])
def test_idempotent(values, resources):
    once = derive(values, resources)
    assert derive(once, resources) == once
    assert "global_num_gpus" not in values  # the input is not modified


@pytest.mark.parametrize("values,precision,dicts", [
    ({}, "fp32", {}),
    ({"fp16": {"enabled": True, "loss_scale": 0}}, "fp16",
     {"fp16": {"enabled": True, "loss_scale": 0}}),
    ({"bf16": {"enabled": True}}, "bf16", {"bf16": {"enabled": True}}),
    ({"precision": "fp16"}, "fp16", {"fp16": {"enabled": True}}),
    ({"precision": "bf16"}, "bf16", {"bf16": {"enabled": True}}),
])
def test_precision_with_cuda(values, precision, dicts):
    out = derive(values, EIGHT_GPUS)
    assert out["precision"] == precision
    assert {k: out[k] for k in ("fp16", "bf16") if k in out} == dicts


def test_optimizer_gives_lr_type_and_zero_defaults():
    out = derive({"optimizer": {"type": "Adam", "params": {"lr": 6e-4}}}, EIGHT_GPUS)
    assert out["lr"] == 6e-4 and out["optimizer_type"] == "adam"
    assert out["zero_optimization"]["stage"] == 0 and out["zero_stage"] == 0
    assert out["zero_reduce_bucket_size"] == 500_000_000
    given = derive({"lr": 1e-3, "zero_optimization": {"stage": 1}}, EIGHT_GPUS)
    assert given["lr"] == 1e-3 and given["zero_stage"] == 1
    assert given["zero_optimization"] == {"stage": 1}


@pytest.mark.parametrize("config,layers,expected", [
    (None, 3, ["global"] * 3),
    ([[["global"], 4]], 4, ["global"] * 4),
    ([[["global", "local"], 2]], 4, ["global", "local", "global", "local"]),
    ([[["local"], 1], [["global"], 2]], 3, ["local", "global", "global"]),
    ([[["flash"], "all"]], 5, ["flash"] * 5),
    ([[["global", "local"], "all"]], 4, ["global", "local", "global", "local"]),
    (["global", "local"], 2, ["global", "local"]),
    ([["global", 2, 3]], 2, None),
])
def test_attention_config_expansion(config, layers, expected):
    assert expand_attention_config(config, layers) == expected


def test_lr_decay_iters_defaults_to_train_iters():
    assert derive({"train_iters": 320}, EIGHT_GPUS)["lr_decay_iters"] == 320
    assert derive({"train_iters": 320, "lr_decay_fraction": 0.25}, EIGHT_GPUS)[
        "lr_decay_iters"] == 80
    assert derive({"train_iters": 320, "lr_decay_iters": 10}, EIGHT_GPUS)["lr_decay_iters"] == 10


def test_cpu_substitutions_warn_once_each(caplog):
    values = {**MINIMAL, "fp16": {"enabled": True}, "attention_config": [[["flash"], 2]]}
    with caplog.at_level(logging.WARNING):
        out = derive(values, ONE_CPU)
    assert out["distributed_backend"] == "gloo"
    assert out["precision"] == "bf16" and "fp16" not in out and out["bf16"] == {"enabled": True}
    assert out["attention_config"] == ["global", "global"]
    assert len(caplog.records) == 3
    with_cuda = derive(values, EIGHT_GPUS)
    assert with_cuda["precision"] == "fp16" and with_cuda["attention_config"] == ["flash"] * 2
    assert "distributed_backend" not in with_cuda


def test_neoxargs_carries_derived_values():
    args = NeoXArgs.from_dict({**MINIMAL, "model_parallel_size": 2}, resources=EIGHT_GPUS)
    assert args.global_num_gpus == 8 and args.train_batch_size == 8
    assert args.attention_config == ["global", "global"] and args.precision == "fp32"
    assert args.is_pipe_parallel is False and args.distributed_backend == "nccl"


@pytest.mark.parametrize("resources", [ONE_CPU, EIGHT_GPUS])
def test_rebuilding_from_all_config_changes_nothing(resources):
    args = NeoXArgs.from_dict({**MINIMAL, "train_batch_size": 16, "precision": "fp16",
                               "attention_config": [[["flash", "global"], 1]]},
                              resources=resources)
    assert NeoXArgs.from_dict(args.all_config, resources=resources) == args


def test_legacy_gas_and_batch_size_keys():
    out = derive({"batch_size": 3, "gas": 2}, Resources(1, 2, True))
    assert (out["train_batch_size"], out["train_micro_batch_size_per_gpu"],
            out["gradient_accumulation_steps"]) == (12, 3, 2)


def test_zero_stage_shorthand_alone_sets_the_dict_stage():
    out = derive({"zero_stage": 2}, EIGHT_GPUS)
    assert out["zero_optimization"]["stage"] == 2 and out["zero_stage"] == 2
    assert out["zero_optimization"]["reduce_bucket_size"] == 500_000_000
