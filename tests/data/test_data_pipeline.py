"""Config -> datasets -> iterator -> get_batch, the way the training loop wires them."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch

from megatron.data import (
    DataConfig,
    build_train_valid_test_datasets,
    get_batch,
    make_data_iterator,
    num_samples_for,
)


def test_reference_corpus_end_to_end(corpus: str, reference_dir) -> None:
    args = SimpleNamespace(data_path=corpus, split="10,0,0", train_iters=50, eval_interval=100,
                           eval_iters=0, train_batch_size=4, seq_length=32, seed=1234)
    counts = num_samples_for(args.train_iters, args.eval_interval, args.eval_iters,
                             args.train_batch_size)
    assert counts == (200, 0, 0)
    train, valid, test = build_train_valid_test_datasets(
        DataConfig.from_args(args), counts, args.seq_length, args.seed)
    assert valid is None and test is None
    expected = np.load(reference_dir / "gpt2dataset_train_200ns_32sl_1234s_samples.npy")
    it = make_data_iterator(train, micro_batch_size=2, dp_rank=1, dp_size=2,
                            consumed_samples=8)
    batch = next(it)
    # Global batch 2 holds samples 8..11; DP rank 1 of 2 takes 10 and 11.
    assert torch.equal(batch["text"], torch.from_numpy(expected[10:12]))
    (tokens, pos), (labels, mask) = get_batch(batch, eod=50256, eod_mask_loss=False)
    assert torch.equal(tokens, torch.from_numpy(expected[10:12, :-1]))
    assert torch.equal(labels, torch.from_numpy(expected[10:12, 1:]))
    assert tokens.shape == pos.shape == labels.shape == mask.shape == (2, 32)
