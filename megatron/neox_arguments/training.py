"""Training group: data, objective, iterations, checkpoints, dropout, recompute, loss scale, muP."""

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True, kw_only=True)
class TrainingArgs:
    """What to train on, for how long, and where to save; run state is not kept here."""

    data_path: str | None = None
    """Prefix of one .bin/.idx dataset, split into train/valid/test by `split`."""

    use_shared_fs: bool = True
    """Nodes share a filesystem, so only one rank per job builds the index maps."""

    train_data_paths: list[str] | None = None
    """Training dataset prefixes (instead of data_path)."""

    train_label_data_paths: list[str] | None = None
    """Label datasets aligned with train_data_paths (-100 tokens are masked)."""

    train_reward_data_paths: list[str] | None = None
    """Reward datasets aligned with train_data_paths (reward-model training)."""

    test_data_paths: list[str] | None = None
    """Test dataset prefixes."""

    test_label_data_paths: list[str] | None = None
    """Label datasets aligned with test_data_paths."""

    test_reward_data_paths: list[str] | None = None
    """Reward datasets aligned with test_data_paths."""

    valid_data_paths: list[str] | None = None
    """Validation dataset prefixes."""

    valid_label_data_paths: list[str] | None = None
    """Label datasets aligned with valid_data_paths."""

    valid_reward_data_paths: list[str] | None = None
    """Reward datasets aligned with valid_data_paths."""

    pos_train_data_paths: list[str] | None = None
    """Pairwise (DPO/RM) training: preferred samples."""

    neg_train_data_paths: list[str] | None = None
    """Pairwise training: rejected samples."""

    pos_valid_data_paths: list[str] | None = None
    """Pairwise validation: preferred samples."""

    neg_valid_data_paths: list[str] | None = None
    """Pairwise validation: rejected samples."""

    pos_test_data_paths: list[str] | None = None
    """Pairwise test: preferred samples."""

    neg_test_data_paths: list[str] | None = None
    """Pairwise test: rejected samples."""

    pos_train_label_data_paths: list[str] | None = None
    """Pairwise training: labels of the preferred samples."""

    neg_train_label_data_paths: list[str] | None = None
    """Pairwise training: labels of the rejected samples."""

    pos_valid_label_data_paths: list[str] | None = None
    """Pairwise validation: labels of the preferred samples."""

    neg_valid_label_data_paths: list[str] | None = None
    """Pairwise validation: labels of the rejected samples."""

    pos_test_label_data_paths: list[str] | None = None
    """Pairwise test: labels of the preferred samples."""

    neg_test_label_data_paths: list[str] | None = None
    """Pairwise test: labels of the rejected samples."""

    train_impl: Literal["normal", "dpo", "rm", "kto"] = "normal"
    """Training objective: language modelling, DPO, reward model, or KTO."""

    dpo_fp32: bool = True
    """Compute the DPO loss in fp32."""

    dpo_reference_free: bool = False
    """DPO without a reference model."""

    dpo_beta: float = 0.1
    """DPO temperature beta."""

    kto_fp32: bool = True
    """Compute the KTO loss in fp32."""

    kto_desirable_weight: float = 1.0
    """KTO weight of desirable samples."""

    kto_undesirable_weight: float = 1.0
    """KTO weight of undesirable samples."""

    kto_beta: float = 0.1
    """KTO temperature beta."""

    allow_chopped: bool = True
    """Pairwise data: allow samples cut at seq_length."""

    train_data_weights: list[float] | None = None
    """Sampling weight of each training dataset."""

    valid_data_weights: list[float] | None = None
    """Sampling weight of each validation dataset."""

    test_data_weights: list[float] | None = None
    """Sampling weight of each test dataset."""

    weight_by_num_documents: bool = False
    """Derive dataset weights from document counts instead of the given weights."""

    weighted_sampler_alpha: float = 1.0
    """Exponent applied to document-count weights (with weight_by_num_documents)."""

    data_impl: Literal["infer", "mmap", "cached"] = "infer"
    """Format of the indexed datasets."""

    pack_impl: Literal["packed", "pack_until_overflow", "unpacked"] = "packed"
    """How documents fill samples: concatenated, whole documents until full, or one each."""

    mmap_warmup: bool = False
    """Read the memory-mapped data once at start to warm the page cache."""

    save: str | None = None
    """Folder to write checkpoints to; None saves nothing."""

    s3_path: str | None = None
    """Also upload checkpoints to this S3 prefix."""

    s3_chunk_size: int = 104_857_600
    """Chunk size in bytes for S3 uploads."""

    config_files: dict[str, str] | None = None
    """Filled in by the loader: config file name -> text, saved with checkpoints."""

    load: str | None = None
    """Folder to resume from; an empty or missing folder starts from scratch."""

    checkpoint_validation_with_forward_pass: bool = False
    """After saving, reload and compare one forward pass."""

    checkpoint_scale: Literal["linear", "log"] = "linear"
    """Save every checkpoint_factor iterations ('linear') or at powers of it ('log')."""

    checkpoint_factor: int | float | None = None
    """Checkpoint interval (linear) or base (log)."""

    extra_save_iters: list[int] | None = None
    """Additional iterations at which to save."""

    no_save_optim: bool = False
    """Do not save optimizer state."""

    no_save_rng: bool = False
    """Do not save random number generator state."""

    no_load_optim: bool = False
    """Do not load optimizer state on resume."""

    no_load_rng: bool = False
    """Do not load random number generator state on resume."""

    finetune: bool = False
    """Load weights only and restart the iteration count at 0."""

    batch_size: int | None = None
    """Old name of the micro batch size per GPU."""

    train_iters: int | None = None
    """Number of optimizer steps to train for."""

    train_epochs: int | None = None
    """Train for this many epochs over the data instead of train_iters."""

    eval_iters: int = 100
    """Validation batches per evaluation."""

    keep_last_n_checkpoints: int | None = None
    """Delete older checkpoints so that only this many remain."""

    eval_interval: int = 1000
    """Evaluate every this many iterations."""

    split: str = "969, 30, 1"
    """Train/valid/test weights of data_path, comma separated."""

    vocab_file: str | None = None
    """Tokenizer vocabulary (or HF tokenizer JSON, or SentencePiece model)."""

    merge_file: str | None = None
    """BPE merges file (GPT-2 tokenizer only)."""

    num_workers: int = 2
    """Data loader worker processes."""

    exit_interval: int | None = None
    """Exit after the iteration that is a multiple of this."""

    attention_dropout: float = 0.0
    """Dropout on attention probabilities."""

    hidden_dropout: float = 0.0
    """Dropout on block outputs."""

    weight_decay: float = 0.1
    """Decoupled weight decay coefficient."""

    checkpoint_activations: bool = False
    """Recompute block activations in the backward pass to save memory."""

    checkpoint_num_layers: int = 1
    """Blocks per activation-checkpoint chunk."""

    deepspeed_activation_checkpointing: bool = True
    """Use DeepSpeed's activation checkpointing implementation."""

    contiguous_checkpointing: bool = False
    """Copy checkpointed activations into one buffer."""

    checkpoint_in_cpu: bool = False
    """Move checkpointed activations to CPU memory."""

    synchronize_each_layer: bool = False
    """Synchronise CUDA after each checkpointed layer."""

    profile_backward: bool = False
    """Profile the backward pass of checkpointed layers."""

    partition_activations: bool = False
    """Split checkpointed activations over the tensor-parallel ranks."""

    gas: int | None = None
    """Old name of gradient_accumulation_steps, read when that key is not given."""

    clip_grad: float = 1.0
    """Gradient norm clipping used outside DeepSpeed (DeepSpeed uses gradient_clipping)."""

    hysteresis: int = 2
    """fp16 dynamic loss scaling: overflows tolerated before lowering the scale."""

    dynamic_loss_scale: bool | None = None
    """Derived from the fp16 dict: whether the loss scale is dynamic."""

    loss_scale: float | None = None
    """Static fp16 loss scale; None means dynamic."""

    loss_scale_window: float = 1000.0
    """fp16 dynamic loss scaling: steps without overflow before raising the scale."""

    min_scale: float = 1.0
    """fp16 dynamic loss scaling: lowest loss scale."""

    char_level_ppl: bool = False
    """Also report character-level perplexity in evaluation."""

    use_mup: bool = False
    """Use muP (maximal update parametrisation)."""

    coord_check: bool = False
    """Run muP coordinate checks instead of training."""

    save_base_shapes: bool = False
    """Write muP base shapes and exit."""

    base_shapes_file: str | None = None
    """muP base shapes file."""

    mup_init_scale: float = 1.0
    """muP: scale of the initialisation."""

    mup_attn_temp: float = 1.0
    """muP: attention temperature."""

    mup_output_temp: float = 1.0
    """muP: output logit temperature."""

    mup_embedding_mult: float = 1.0
    """muP: embedding output multiplier."""

    mup_rp_embedding_mult: float = 1.0
    """muP: relative position embedding multiplier."""

    mup_width_scale: int = 2
    """muP: width multiplier of the delta model used for base shapes."""

    dataset_impl: Literal["gpt2", "pairwise"] = "gpt2"
    """Sample format: plain token windows or preference pairs."""

    label_data_paths: list[str] | None = None
    """Ours: label dataset aligned with data_path (GPT-NeoX only has the per-split keys)."""

    z_loss: float = 0.0
    """Weight of the z-loss (squared log-partition) regulariser."""

    max_consecutive_skipped_steps: int = 0
    """Ours: stop after this many consecutive non-finite steps; 0 never stops."""

    eval_task_limit: int | None = None
    """Ours: at most this many examples per evaluation task; None runs them all."""
