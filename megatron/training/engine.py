"""How a run is assembled, in one place and in order.

distributed init -> process groups -> tokenizer -> model (full init, then this rank's TP
slice) -> optimizer and LR schedule -> DeepSpeed engine -> data. Every other module gets
what it needs from the `Run` this returns, never from globals.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from megatron.data import batch as batch_mod
from megatron.data.data_utils import (
    DataConfig,
    build_train_valid_test_datasets,
    num_samples_for,
)
from megatron.data.iterator import make_data_iterator
from megatron.model import ModelSpec, build_model
from megatron.parallel import ParallelLayout, ProcessGroups
from megatron.parallel.random import RNGTracker
from megatron.tokenizer import build_tokenizer, padded_vocab_size
from megatron.training import mup
from megatron.training.faults import Watchdog
from megatron.training.grad_clip import clip_grads_, global_grad_norm
from megatron.training.grad_sync import use_shared_memory
from megatron.training.lr_schedules import AnnealingLR
from megatron.training.master_weights import (
    MasterWeights,
    cast_parameters_,
    why_not_master_weights,
)
from megatron.training.nonfinite import NonFiniteGuard
from megatron.training.optimizers import DeepSpeedOptimizer, build_optimizer, param_groups
from megatron.training.sharded_optimizer import ShardedOptimizer, ShardPlan, why_not_sharded
from megatron.training.state import seed_everything
from megatron.utils.deepspeed_ops import skip_unused_cpu_ops

LOG = logging.getLogger(__name__)

# Keys we build ourselves and hand to deepspeed.initialize as objects.
_CLIENT_BUILT = ("optimizer", "scheduler")


@dataclass
class Run:
    """Everything a training, evaluation or generation loop needs."""

    args: Any
    groups: ProcessGroups
    tokenizer: Any
    spec: ModelSpec
    engine: Any
    loss_fn: Callable
    is_pipe: bool
    rng_tracker: RNGTracker
    guard: NonFiniteGuard | None

    @property
    def is_rank0(self) -> bool:
        return not dist.is_initialized() or dist.get_rank() == 0


def init_distributed(args: Any) -> None:
    """Start torch.distributed through DeepSpeed (gloo on CPU, NCCL on CUDA)."""
    import deepspeed

    from megatron.launch import distributed_env

    # Under MPI or SLURM the ranks come from the scheduler's variables, not torchrun's.
    os.environ.update(
        distributed_env(
            os.environ,
            master_addr=args.master_addr,
            master_port=args.master_port,
            hostfile=args.hostfile,
        )
    )
    skip_unused_cpu_ops()
    if torch.cuda.is_available():  # before any CUDA state (RNG streams, NCCL) is created
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
    if not dist.is_initialized():
        # A lost node then fails the survivors' next collective after this long, not 10 minutes.
        timeout = timedelta(minutes=float(getattr(args, "distributed_timeout_minutes", 10.0)))
        deepspeed.init_distributed(
            dist_backend=args.distributed_backend, auto_mpi_discovery=True, timeout=timeout
        )
        # Survivors of a lost node then log which rank they lost before they exit.
        Watchdog.start()


def shutdown_distributed() -> None:
    """Destroy torch.distributed's process groups at the end of a run, while Python is whole.

    NCCL warns of a group that was never destroyed, and a destroyed group takes no more work.
    It does not by itself stop gloo's worker threads (Python objects that still refer to a
    group keep them alive), so it cannot prevent the abort at interpreter teardown that
    pytorch/pytorch#190489 describes; the worker entry points avoid that teardown
    (``megatron.utils.process_exit``). Entry points call this when a run ends normally, not
    when it fails: a failed rank's peers may still be inside a collective with it.
    """
    if dist.is_initialized():
        dist.destroy_process_group()


def build_groups(args: Any) -> ProcessGroups:
    layout = ParallelLayout.from_world(
        dist.get_world_size(),
        tp=args.model_parallel_size,
        pp=args.pipe_parallel_size,
        rank=dist.get_rank(),
    )
    return ProcessGroups.build(layout)


def build_spec(args: Any, tokenizer: Any) -> ModelSpec:
    """The model spec with the vocabulary padded as GPT-NeoX pads it."""
    vocab = args.padded_vocab_size or padded_vocab_size(
        tokenizer.vocab_size, args.make_vocab_size_divisible_by, args.model_parallel_size
    )
    return ModelSpec.from_args(args, padded_vocab_size=vocab)


def _device_type() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _deepspeed_config(args: Any) -> dict[str, Any]:
    config = dict(args.deepspeed_config)
    for key in _CLIENT_BUILT:
        config.pop(key, None)
    return config


def build_run(args: Any) -> Run:
    """Assemble the engine; the order here is the order the guide documents."""
    import deepspeed

    init_distributed(args)
    skip_unused_cpu_ops()  # also when torch.distributed was started by someone else
    seed_everything(args.seed)
    groups = build_groups(args)
    tokenizer = build_tokenizer(args.tokenizer_type, args.vocab_file, args.merge_file)
    spec = build_spec(args, tokenizer)
    if args.use_mup or args.save_base_shapes:
        spec = mup.setup_spec(args, spec, dist.get_rank() == 0)
    is_pipe = args.pipe_parallel_size >= 1
    # Dropout streams: shared where the model is replicated, per-rank inside TP shards.
    tracker = RNGTracker.from_seed(args.seed, groups.tp.rank, device_type=_device_type())
    # The chunked LM head + loss never materialises full logits; ZeRO-3 gathers the head
    # weight only inside the module's forward, and the pipeline has its own head layer.
    fused = not is_pipe and args.zero_optimization.get("stage", 0) < 3
    model, loss_fn = build_model(
        spec,
        groups,
        fused_loss=fused,
        pipe_parallel_size=args.pipe_parallel_size,
        partition_method=args.pipe_partition_method,
        activation_checkpointing=args.checkpoint_activations,
        checkpoint_num_layers=args.checkpoint_num_layers,
        seed=args.seed,
        rng_tracker=tracker,
    )
    groups_of_params = param_groups(model, args.weight_decay)
    if args.use_mup:  # base shapes, muP init, and per-group LR / weight-decay factors
        mup.apply_mup(model, args, groups.tp.size)
        groups_of_params = mup.mup_param_groups(
            groups_of_params, args.optimizer["type"], args.weight_decay
        )
    config = _deepspeed_config(args)
    optimizer, plan = _optimizer(args, model, groups_of_params, config, groups, is_pipe)
    if not isinstance(optimizer, torch.optim.AdamW | torch.optim.Adam):
        # DeepSpeed only vouches for its own optimizer list under ZeRO; ours are tested here.
        config.setdefault("zero_allow_untested_optimizer", True)
    if isinstance(optimizer, DeepSpeedOptimizer):
        # DeepSpeed builds this one (e.g. OneBitAdam) from its own config section.
        config["optimizer"], optimizer, scheduler = optimizer.config, None, None
    else:
        scheduler = AnnealingLR.from_args(optimizer, args)
    # MasterWeights checks its own gradients (their norm) before it steps.
    checked = optimizer is None or _keeps_masters(optimizer)
    guard = None if checked else NonFiniteGuard(optimizer)
    engine, _, _, _ = deepspeed.initialize(
        model=model,
        optimizer=optimizer,
        model_parameters=groups_of_params if optimizer is None else None,
        lr_scheduler=scheduler,
        config=config,
        mpu=None if is_pipe else groups.mpu,
        dist_init_required=False,
    )
    if not is_pipe and groups.dp.size == 1 and not engine.zero_optimization():
        # Nothing to reduce: skip the flatten/copy. Not under ZeRO 1/2, whose reduce step is
        # also what moves the gradients into the optimizer's partitions (without it the first
        # step failed with KeyError: 0 on one process).
        engine.enable_backward_allreduce = False
    elif not is_pipe:  # CPU ranks of one machine, stage 0
        use_shared_memory(engine, groups.dp, None if plan is None else plan.sharer)
    _clip_fp32_globally(engine, groups.tp.rank)
    return Run(args, groups, tokenizer, spec, engine, loss_fn, is_pipe, tracker, guard)


def _optimizer(args: Any, model: torch.nn.Module, groups_of_params: list,
               config: dict[str, Any], groups: ProcessGroups,
               is_pipe: bool) -> tuple[Any, ShardPlan | None]:
    """The optimizer DeepSpeed is handed, and the shard plan when the data-parallel ranks
    each step a part of the model (then the optimizer is a ShardedOptimizer)."""

    def build(groups_: list[dict[str, Any]]) -> Any:
        return build_optimizer(groups_, args.optimizer, weight_decay=args.weight_decay,
                               use_bnb_optimizer=args.use_bnb_optimizer)

    optimizer = build(groups_of_params)  # cheap: torch's optimizers make state at a step
    why_not_masters = why_not_master_weights(
        args.precision, args.zero_optimization.get("stage", 0), is_pipe, optimizer)
    if why_not_masters is not None:
        LOG.debug("bf16 master weights kept by DeepSpeed: %s", why_not_masters)
    masters = why_not_masters is None
    plan = _shard_plan(args, groups_of_params, optimizer, groups, is_pipe, masters)
    local_groups = groups_of_params if plan is None else plan.owned(groups_of_params)
    if plan is not None:
        optimizer = build(local_groups)
    if masters:
        optimizer = _bf16_master_weights(args, model, local_groups, build, config, groups,
                                         sharded=plan is not None)
    if plan is not None:
        optimizer = ShardedOptimizer(optimizer, groups_of_params, plan)
    return optimizer, plan


def _shard_plan(args: Any, groups_of_params: list, optimizer: Any, groups: ProcessGroups,
                is_pipe: bool, masters: bool) -> ShardPlan | None:
    """Who steps which parameter, where the data-parallel ranks need not all step all of
    them (see sharded_optimizer); None where they must. Collective over the DP group."""
    reason = why_not_sharded(
        dp_size=groups.dp.size, device_type=_device_type(),
        zero_stage=args.zero_optimization.get("stage", 0), is_pipe=is_pipe,
        optimizer=optimizer, fp32_engine=masters or args.precision == "fp32")
    plan = None
    if reason is None:
        dtype = torch.bfloat16 if masters else torch.float32
        plan = ShardPlan.create(groups_of_params, groups.dp, dtype)
        reason = "the data-parallel ranks share no /dev/shm" if plan is None else None
    if plan is None:
        LOG.debug("optimizer step replicated on every data-parallel rank: %s", reason)
    return plan


def _bf16_master_weights(args: Any, model: torch.nn.Module, groups_of_params: list,
                         build: Callable, config: dict[str, Any], groups: ProcessGroups,
                         sharded: bool) -> MasterWeights:
    """A MasterWeights over the bf16 weights in `groups_of_params` (see its module).

    DeepSpeed then sees an fp32 run: `config` loses bf16 and gains bf16 gradient
    communication, as DeepSpeed's bf16 mode reduces them. Sharded, each rank's masters are
    its own parameters', so the clipping norm is summed over every rank.
    """
    cast_parameters_(model, torch.bfloat16)
    config["bf16"] = {**config.get("bf16", {}), "enabled": False}
    config.setdefault("communication_data_type", "bf16")
    group = groups.tp.group if groups.tp.size > 1 else None
    return MasterWeights(groups_of_params, build, clip=args.gradient_clipping,
                         tp_rank=groups.tp.rank,
                         model_group=dist.group.WORLD if sharded else group)


def _keeps_masters(optimizer: Any) -> bool:
    """Whether our MasterWeights steps (and clips) this optimizer's weights."""
    stepping = optimizer.local if isinstance(optimizer, ShardedOptimizer) else optimizer
    return isinstance(stepping, MasterWeights)


def _clip_fp32_globally(engine: Any, tp_rank: int) -> None:
    """Replace DeepSpeed's fp32 clipping with one that counts every stage (see grad_clip).

    With fp16, bf16 or ZeRO DeepSpeed's optimizer wrapper clips and reports the norm; in
    plain fp32 it goes through `clip_fp32_gradients`, which we take over here so the norm
    is global on a pipeline too, and is kept for logging.
    """

    if _keeps_masters(engine.optimizer):
        engine.clip_fp32_gradients = lambda: None  # it clips its fp32 copies itself
        return

    def clip() -> None:
        params = list(engine.module.parameters())
        norm = global_grad_norm(params, tp_rank, engine.mpu.get_model_parallel_group())
        clip_grads_(params, engine.gradient_clipping(), norm)
        engine._global_grad_norm = float(norm)

    engine.clip_fp32_gradients = clip


def build_data(run: Run, consumed_samples: int) -> tuple[Iterator | None, Any, Any]:
    """Train iterator (resumed at `consumed_samples`) and the valid and test datasets.

    Rank 0 builds the index maps first so the other ranks only memory-map them.
    """
    args = run.args
    num_samples = num_samples_for(
        args.train_iters, args.eval_interval, args.eval_iters, args.train_batch_size
    )
    cfg = DataConfig.from_args(args)

    def build() -> tuple[Any, Any, Any]:
        return build_train_valid_test_datasets(cfg, num_samples, args.seq_length, args.seed)

    if run.is_rank0:
        datasets = build()
    dist.barrier()
    if not run.is_rank0:
        datasets = build()
    train, valid, test = datasets
    train_iter = batches(run, train, consumed_samples) if train is not None else None
    return train_iter, valid, test


def batches(
    run: Run, dataset: Any, consumed_samples: int, *, cycle: bool = False
) -> Iterator[tuple]:
    """Micro-batches as ((tokens, position_ids), (labels, loss_mask)) on the engine's device.

    Evaluation iterators cycle, so a final evaluation never runs out of samples.
    """
    args = run.args
    raw = make_data_iterator(
        dataset,
        micro_batch_size=args.train_micro_batch_size_per_gpu,
        dp_rank=run.groups.dp.rank,
        dp_size=run.groups.dp.size,
        consumed_samples=consumed_samples,
        cycle=cycle,
    )
    device = run.engine.device
    for item in raw:
        inputs, labels = batch_mod.get_batch(item, run.tokenizer.eod, args.eod_mask_loss)
        yield _to(inputs, device), _to(labels, device)


def _to(tensors: tuple[torch.Tensor, ...], device: Any) -> tuple[torch.Tensor, ...]:
    return tuple(t.to(device, non_blocking=True) for t in tensors)
