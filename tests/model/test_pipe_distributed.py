"""The DeepSpeed pipeline adapter: 2 stages hold the plain model's layers and give its loss."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from megatron.model import build_model
from megatron.parallel import ParallelLayout, ProcessGroups
from tests.distributed import run_distributed
from tests.model.conftest import tiny_inputs, tiny_spec

pytestmark = [pytest.mark.distributed, pytest.mark.timeout(240)]


def _plain_name(pipe_name: str) -> str:
    """``'3.mlp.linear1.weight'`` -> ``'sequential.3.mlp...'``; tied embedding -> layer 0."""
    if pipe_name.startswith("tied_modules.embed."):
        return "sequential.0." + pipe_name.removeprefix("tied_modules.embed.")
    return "sequential." + pipe_name


def check_two_stage_pipeline(rank: int, world_size: int, save_dir: str) -> None:
    import deepspeed

    os.environ.update(LOCAL_RANK=str(rank), RANK=str(rank), WORLD_SIZE=str(world_size))
    deepspeed.init_distributed(dist_backend="gloo")
    groups = ProcessGroups.build(ParallelLayout(tp=1, pp=2, dp=1, rank=rank))
    spec = tiny_spec(num_layers=3)
    pipe, _ = build_model(spec, groups, pipe_parallel_size=2, seed=9,
                          activation_checkpointing=True, checkpoint_num_layers=1)
    dense, dense_loss_fn = build_model(spec, ProcessGroups.single(), pipe_parallel_size=0,
                                       seed=9)
    # type:transformer puts 2 blocks on stage 0 and 1 block on stage 1; the embedding is tied
    # onto the last stage.
    assert list(pipe.parts) == [0, 4, 8]
    dense_params = dict(dense.named_parameters())
    names = [_plain_name(n) for n, _ in pipe.named_parameters()]
    expected_layers = {0, 2, 3} if rank == 0 else {0, 4, 6}
    assert {int(n.split(".")[1]) for n in names} == expected_layers
    for name, param in pipe.named_parameters():
        assert torch.equal(param, dense_params[_plain_name(name)]), name
    cfg = {"train_batch_size": 2, "train_micro_batch_size_per_gpu": 1,
           "optimizer": {"type": "SGD", "params": {"lr": 0.0}}}
    engine, *_ = deepspeed.initialize(model=pipe, config=cfg,
                                      model_parameters=list(pipe.parameters()))
    tokens, pos, labels = tiny_inputs()
    mask = torch.ones(1, 16)
    batches = [((tokens[i : i + 1], pos[i : i + 1]), (labels[i : i + 1], mask)) for i in (0, 1)]
    loss = engine.eval_batch(iter(batches))
    with torch.no_grad():
        ref = sum(dense_loss_fn(dense(b[0]), b[1]) for b in batches) / 2
    torch.testing.assert_close(loss.reshape(()), ref, atol=1e-5, rtol=0)
    # A training step (lr 0) runs backward through the checkpointed stages.
    train_loss = engine.train_batch(iter(batches))
    torch.testing.assert_close(train_loss.reshape(()), ref, atol=1e-5, rtol=0)
    engine.save_checkpoint(save_dir, tag="global_step1")
    torch.distributed.barrier()
    files = sorted(f.name for f in Path(save_dir, "global_step1").glob("layer_*"))
    # GPT-NeoX's on-disk layers for L=3, tied: 0, 2..4 and 6 (no 1, 5 or tied head 7).
    assert files == [f"layer_{i:02d}-model_00-model_states.pt" for i in (0, 2, 3, 4, 6)]
    layer0 = torch.load(Path(save_dir, "global_step1", files[0]), weights_only=True)
    assert sorted(layer0) == ["position_embeddings.weight", "word_embeddings.weight"]


def test_two_stage_pipeline_matches_plain_model(tmp_path: Path) -> None:
    run_distributed(check_two_stage_pipeline, 2, 200.0, str(tmp_path))
