"""checkpoint_io: merging tensor-parallel shards, any layout, and writing loadable folders.

Independent references: the model built per tensor-parallel rank (its own sharding), row
indices written out by hand for the GQA/gated layouts, and the training engine's manifest
check.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from megatron.model.checkpoint_io import (
    CheckpointFormatError,
    load_full_state_dict,
    save_as_checkpoint,
    shard_state_dict,
)
from megatron.model.gpt import GPTModel
from megatron.model.spec import ModelSpec
from megatron.parallel.groups import Group

# GQA (4 query heads, 2 kv heads, head_dim 16), gated MLP (width 64), untied head, biases.
GQA = ModelSpec(hidden_size=64, num_layers=2, num_attention_heads=4, num_kv_heads=2,
                padded_vocab_size=96, seq_length=16, pos_emb="rotary", norm="rmsnorm",
                activation="swiglu", intermediate_size=64, tie_word_embeddings=False)
# Plain multi-head, learned positions, tied embedding, parallel residual.
MHA = ModelSpec(hidden_size=32, num_layers=3, num_attention_heads=4, padded_vocab_size=64,
                seq_length=16, pos_emb="learned", gpt_j_residual=True)


def random_full(spec: ModelSpec, seed: int = 0) -> dict[str, torch.Tensor]:
    """The model's full state dict with every tensor perturbed (no all-zero biases)."""
    state = GPTModel(spec, Group(), seed=seed).state_dict()
    gen = torch.Generator().manual_seed(seed)
    return {k: v + 0.1 * torch.randn(v.shape, generator=gen) for k, v in state.items()}


@pytest.mark.parametrize("spec", [GQA, MHA], ids=["gqa", "mha"])
def test_shards_equal_the_model_built_on_each_rank(spec: ModelSpec) -> None:
    full = GPTModel(spec, Group(), seed=5).state_dict()
    for rank in range(2):
        built = GPTModel(spec, Group(size=2, rank=rank, ranks=(0, 1)), seed=5).state_dict()
        ours = shard_state_dict(full, spec, rank, 2)
        assert ours.keys() == built.keys()
        for name in built:
            assert torch.equal(ours[name], built[name]), name


def test_gqa_and_gated_rows_by_hand() -> None:
    full = random_full(GQA)
    shard = shard_state_dict(full, GQA, 1, 2)
    qkv = full["sequential.2.attention.query_key_value.weight"]  # rows [Q 64 | K 32 | V 32]
    expected = torch.cat([qkv[32:64], qkv[64 + 16:96], qkv[96 + 16:128]])
    assert torch.equal(shard["sequential.2.attention.query_key_value.weight"], expected)
    lin1 = full["sequential.3.mlp.linear1.weight"]  # rows [value 64 | gate 64]
    assert torch.equal(shard["sequential.3.mlp.linear1.weight"],
                       torch.cat([lin1[32:64], lin1[96:128]]))
    dense = full["sequential.2.attention.dense.weight"]  # row-parallel: columns split
    assert torch.equal(shard["sequential.2.attention.dense.weight"], dense[:, 32:])
    # Row-parallel biases are added once after the reduce: every rank keeps the full copy.
    assert torch.equal(shard["sequential.2.attention.dense.bias"],
                       full["sequential.2.attention.dense.bias"])
    assert torch.equal(shard["sequential.6.final_linear.weight"],
                       full["sequential.6.final_linear.weight"][48:])


LAYOUT_FILES = {
    (1, 0): {"mp_rank_00_model_states.pt"},
    (2, 0): {"mp_rank_00_model_states.pt", "mp_rank_01_model_states.pt"},
    (2, 2): {f"mp_rank_0{r}_model_states.pt" for r in range(4)}
    | {f"layer_{i:02d}-model_{r:02d}-model_states.pt" for i in (0, 2, 3, 5, 6) for r in (0, 1)},
}


@pytest.mark.parametrize("tp,pp", sorted(LAYOUT_FILES))
def test_any_layout_merges_back_to_the_same_tensors(tmp_path: Path, tp: int, pp: int) -> None:
    full = random_full(GQA, seed=1)
    folder = save_as_checkpoint(full, GQA, tmp_path, tp=tp, pp=pp, config_files={"m.yml": "{}"})
    assert folder == tmp_path / "global_step0"
    names = {p.name for p in folder.iterdir() if p.name.endswith(".pt")}
    assert names == LAYOUT_FILES[(tp, pp)]
    merged = load_full_state_dict(tmp_path, GQA)  # through 'latest'
    assert merged.keys() == full.keys()
    for name in full:
        assert torch.equal(merged[name], full[name]), name
    assert (folder / "configs" / "m.yml").read_text() == "{}"


def test_tied_pipeline_checkpoint_has_no_head_file(tmp_path: Path) -> None:
    full = random_full(MHA)
    folder = save_as_checkpoint(full, MHA, tmp_path, tp=2, pp=1, iteration=7)
    layers = sorted({p.name.split("-")[0] for p in folder.glob("layer_*")})
    assert layers == ["layer_00", "layer_02", "layer_03", "layer_04", "layer_06"]
    loaded = load_full_state_dict(folder, MHA)
    assert torch.equal(loaded["sequential.0.position_embeddings.weight"],
                       full["sequential.0.position_embeddings.weight"])
    assert (tmp_path / "latest").read_text() == "global_step7"


def test_training_engine_accepts_the_written_folder(tmp_path: Path) -> None:
    from megatron.training.checkpointing import checkpoint_problem, find_loadable_tag

    folder = save_as_checkpoint(random_full(MHA), MHA, tmp_path, tp=1, pp=0,
                                config_files={"model.yml": "{}"})
    assert checkpoint_problem(folder) is None
    assert find_loadable_tag(str(tmp_path)) == "global_step0"
    blob = torch.load(folder / "mp_rank_00_model_states.pt", weights_only=True)
    assert blob["dp_world_size"] == 1 and blob["module"].keys() == random_full(MHA).keys()


def test_mismatched_config_names_the_tensor(tmp_path: Path) -> None:
    save_as_checkpoint(random_full(MHA), MHA, tmp_path)
    wider = dataclasses.replace(MHA, padded_vocab_size=128)
    with pytest.raises(CheckpointFormatError, match=r"word_embeddings.weight has shape \(64, 32\)"):
        load_full_state_dict(tmp_path, wider)
    untied = dataclasses.replace(MHA, tie_word_embeddings=False)
    with pytest.raises(CheckpointFormatError, match="missing.*final_linear"):
        load_full_state_dict(tmp_path, untied)


def test_missing_rank_file_and_empty_folder_are_reported(tmp_path: Path) -> None:
    folder = save_as_checkpoint(random_full(MHA), MHA, tmp_path / "a", tp=2)
    (folder / "mp_rank_00_model_states.pt").unlink()
    with pytest.raises(CheckpointFormatError, match=r"ranks \[1\] are not 0..N-1"):
        load_full_state_dict(folder, MHA)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointFormatError, match="holds no mp_rank_XX_model_states.pt"):
        load_full_state_dict(tmp_path / "empty", MHA)
    with pytest.raises(CheckpointFormatError, match="no such checkpoint folder"):
        load_full_state_dict(tmp_path / "nowhere", MHA)


def test_uneven_split_is_refused() -> None:
    full = random_full(MHA)
    with pytest.raises(CheckpointFormatError, match="not divisible by tensor-parallel size 3"):
        shard_state_dict(full, MHA, 0, 3)


def _engine(model: torch.nn.Module, mpu: object | None) -> object:
    import deepspeed

    cfg = {"train_batch_size": 1, "train_micro_batch_size_per_gpu": 1,
           "optimizer": {"type": "SGD", "params": {"lr": 0.0}}}
    engine, *_ = deepspeed.initialize(model=model, config=cfg, mpu=mpu,
                                      model_parameters=list(model.parameters()))
    return engine


def _plain_names(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A model's state as ``sequential.<i>.<param>`` (pipeline names mapped like GPT-NeoX)."""
    out = {}
    for name, tensor in module.state_dict().items():
        name = name.removeprefix("module.")
        if name.startswith("tied_modules.embed."):
            name = "0." + name.removeprefix("tied_modules.embed.")
        out[name if name.startswith("sequential.") else f"sequential.{name}"] = tensor
    return out


def check_deepspeed_engines(rank: int, world_size: int, root: str) -> None:
    """TP=2 DeepSpeed engines (plain and pipeline) write what we merge, and load what we
    write with ``load_module_only`` (the training engine's ``finetune: true`` path)."""
    import deepspeed

    from megatron.model import build_model
    from megatron.parallel import ParallelLayout, ProcessGroups

    deepspeed.init_distributed(dist_backend="gloo")
    groups = ProcessGroups.build(ParallelLayout(tp=2, pp=1, dp=1, rank=rank))
    for pp in (0, 1):
        model, _ = build_model(GQA, groups, pipe_parallel_size=pp, seed=11 + pp)
        engine = _engine(model, None if pp else groups.mpu)
        saved = Path(root, f"ds_pp{pp}")
        engine.save_checkpoint(str(saved), tag="global_step3")
        torch.distributed.barrier()
        merged = load_full_state_dict(saved / "global_step3", GQA)
        dense = GPTModel(GQA, Group(), seed=11 + pp).state_dict()  # layout-independent init
        assert merged.keys() == dense.keys()
        assert all(torch.equal(merged[k], dense[k]) for k in dense), pp
        full = random_full(GQA, seed=20 + pp)
        ours = Path(root, f"ours_pp{pp}")
        if rank == 0:
            save_as_checkpoint(full, GQA, ours, tp=2, pp=pp)
        torch.distributed.barrier()
        engine.load_checkpoint(str(ours), load_module_only=True, load_optimizer_states=False,
                               load_lr_scheduler_states=False)
        expected = shard_state_dict(full, GQA, rank, 2)
        got = _plain_names(engine.module)
        assert got.keys() == expected.keys(), sorted(got.keys() ^ expected.keys())
        assert all(torch.equal(got[k], expected[k]) for k in expected), pp


@pytest.mark.distributed
@pytest.mark.timeout(300)
def test_deepspeed_engines_write_what_we_merge_and_load_what_we_write(tmp_path: Path) -> None:
    from tests.distributed import run_distributed

    run_distributed(check_deepspeed_engines, 2, 280.0, str(tmp_path))


def test_engine_file_with_numpy_client_state_still_loads(tmp_path: Path) -> None:
    import numpy as np

    full = random_full(MHA)
    folder = tmp_path / "global_step2"
    folder.mkdir()
    # What the training loop adds as client state: the NumPy RNG state (not weights-only).
    torch.save({"module": full, "rng_state": {"numpy": np.random.RandomState(0).get_state()}},
               folder / "mp_rank_00_model_states.pt")
    with pytest.raises(Exception, match="(?i)weights_only|unpickl"):
        torch.load(folder / "mp_rank_00_model_states.pt", weights_only=True)
    merged = load_full_state_dict(folder, MHA)
    assert all(torch.equal(merged[k], full[k]) for k in full)
