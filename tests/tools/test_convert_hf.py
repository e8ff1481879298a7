"""HF export/import: the exported model, run by transformers, computes what ours computes.

Each case writes one of our checkpoints (in a tensor/pipeline-parallel layout), converts it
with tools/convert_to_hf.py, loads the folder with ``AutoModelForCausalLM`` and compares
logits (fp32, max abs diff <= 1e-4) and a greedy continuation against our model. Import
cases build small random HF models locally and check the round trip is bitwise.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from megatron.model.checkpoint_io import save_as_checkpoint  # noqa: E402
from megatron.model.gpt import GPTModel  # noqa: E402
from megatron.model.spec import ModelSpec  # noqa: E402
from megatron.parallel.groups import Group  # noqa: E402
from tools import convert_to_hf  # noqa: E402

TOKENIZER_JSON = ROOT.parent / "shared" / "data" / "gpt2-tokenizer.json"
TRAIN = {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1}
BASE = {"num_layers": 2, "hidden_size": 64, "num_attention_heads": 4, "seq_length": 32,
        "max_position_embeddings": 32, "pos_emb": "rotary", "padded_vocab_size": 96}
NEOX_PARALLEL = {**BASE, "rotary_pct": 0.25, "gpt_j_residual": True, "no_weight_tying": True,
                 "rotary_emb_base": 1000}
NEOX_SEQUENTIAL_TIED = {**BASE, "rotary_pct": 0.5, "gpt_j_residual": False,
                        "intermediate_size": 192, "use_bias_in_mlp": False}
LLAMA_GQA = {**BASE, "num_kv_heads": 2, "norm": "te_rmsnorm", "rms_norm_epsilon": 1.0e-5,
             "use_bias_in_norms": False, "use_bias_in_attn_linear": False,
             "use_bias_in_mlp": False, "activation": "swiglu", "intermediate_size": 384,
             "no_weight_tying": True}


@pytest.fixture(autouse=True)
def _few_threads() -> None:
    torch.set_num_threads(1)  # the test machine is small and shared


def our_model(cfg: dict[str, Any], seed: int = 0) -> tuple[ModelSpec, GPTModel]:
    """The model ``cfg`` describes, every tensor perturbed so no bias or norm is trivial."""
    spec = ModelSpec.from_args(SimpleNamespace(**cfg))
    model = GPTModel(spec, Group(), seed=seed).eval()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen))
    return spec, model


def write_run(tmp: Path, cfg: dict[str, Any], model: GPTModel, spec: ModelSpec, *, tp: int,
              pp: int) -> Path:
    configs = {"model.yml": json.dumps(cfg), "train.yml": json.dumps(TRAIN)}
    return save_as_checkpoint(model.state_dict(), spec, tmp / "ckpt", tp=tp, pp=pp,
                              config_files=configs)


def export(ckpt: Path, out: Path, *extra: str) -> Any:
    from transformers import AutoModelForCausalLM

    assert convert_to_hf.main(["--input_dir", str(ckpt), "--output_dir", str(out),
                               *extra]) == 0
    hf, info = AutoModelForCausalLM.from_pretrained(str(out), output_loading_info=True)
    assert not any(info.values()), info  # nothing missing, unexpected or mismatched
    return hf.eval()


def our_greedy(model: GPTModel, prompt: torch.Tensor, steps: int) -> torch.Tensor:
    seq = prompt
    for _ in range(steps):
        pos = torch.arange(seq.shape[1]).expand_as(seq)
        next_id = model((seq, pos))[:, -1].argmax(-1, keepdim=True)
        seq = torch.cat([seq, next_id], dim=1)
    return seq


CASES = {
    "neox-partial-rotary-parallel-untied": (NEOX_PARALLEL, 2, 0, "GPTNeoXForCausalLM"),
    "neox-sequential-tied": (NEOX_SEQUENTIAL_TIED, 1, 1, "GPTNeoXForCausalLM"),
    "llama-gqa": (LLAMA_GQA, 2, 2, "LlamaForCausalLM"),
    # GPT-NeoX's rmsnorm adds eps to the RMS (HF: inside the sqrt); with its default eps
    # (1e-8) the two agree far below the tolerance.
    "llama-neox-rmsnorm": ({**LLAMA_GQA, "norm": "rmsnorm", "rms_norm_epsilon": 1.0e-8,
                            "num_kv_heads": 1, "activation": "geglu"}, 1, 0,
                           "LlamaForCausalLM"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_exported_model_matches_ours(tmp_path: Path, case: str) -> None:
    cfg, tp, pp, hf_class = CASES[case]
    spec, model = our_model(cfg)
    hf = export(write_run(tmp_path, cfg, model, spec, tp=tp, pp=pp), tmp_path / "hf")
    assert type(hf).__name__ == hf_class
    tokens = torch.randint(0, 96, (2, 20), generator=torch.Generator().manual_seed(3))
    pos = torch.arange(20).expand(2, 20)
    with torch.no_grad():
        ours, theirs = model((tokens, pos)), hf(input_ids=tokens).logits
        assert (ours - theirs).abs().max().item() <= 1e-4
        prompt = tokens[:1, :4]
        expected = our_greedy(model, prompt, 8)
        got = hf.generate(prompt, max_new_tokens=8, do_sample=False, min_new_tokens=8,
                          pad_token_id=0)
    assert torch.equal(got, expected)


def test_exported_config_fields(tmp_path: Path) -> None:
    spec, model = our_model(NEOX_PARALLEL)
    hf = export(write_run(tmp_path, NEOX_PARALLEL, model, spec, tp=1, pp=0), tmp_path / "hf",
                "--precision", "bf16")
    config = hf.config
    assert config.use_parallel_residual is True and config.tie_word_embeddings is False
    assert config.rope_parameters["partial_rotary_factor"] == 0.25
    assert config.rope_parameters["rope_theta"] == 1000
    assert config.intermediate_size == 256 and config.vocab_size == 96
    assert config.dtype == torch.bfloat16
    from safetensors.torch import load_file

    stored = load_file(str(tmp_path / "hf" / "model.safetensors"))
    assert {t.dtype for t in stored.values()} == {torch.bfloat16}
    assert "embed_out.weight" in stored


def test_tokenizer_is_saved_beside_the_model(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    cfg = {**NEOX_SEQUENTIAL_TIED, "padded_vocab_size": None,
           "tokenizer_type": "HFTokenizer", "vocab_file": str(TOKENIZER_JSON)}
    spec, model = our_model({**cfg, "padded_vocab_size": 50304})
    write_run(tmp_path, cfg, model, spec, tp=1, pp=0)
    hf = export(tmp_path / "ckpt", tmp_path / "hf")
    assert hf.config.vocab_size == 50304  # read from the stored embedding
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    assert tok("Hello world").input_ids == [15496, 995]  # GPT-2 ids of "Hello", " world"
    assert hf.config.eos_token_id == 50256


REFUSED = {
    "alibi": ({**NEOX_PARALLEL, "pos_emb": "alibi"}, [], "pos_emb = 'alibi'"),
    "gqa-as-neox": (LLAMA_GQA, ["--architecture", "neox"], "num_kv_heads = 2"),
    "parallel-as-llama": ({**LLAMA_GQA, "gpt_j_residual": True}, [], "gpt_j_residual"),
    "layernorm-as-llama": ({**LLAMA_GQA, "norm": "layernorm"}, [], "norm = 'layernorm'"),
    "qk-norm": ({**NEOX_PARALLEL, "use_qk_layernorm": True}, [], "use_qk_layernorm"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_unrepresentable_options_are_refused(tmp_path: Path, case: str,
                                             caplog: pytest.LogCaptureFixture) -> None:
    cfg, extra, needle = REFUSED[case]
    spec, model = our_model(cfg)
    ckpt = write_run(tmp_path, cfg, model, spec, tp=1, pp=0)
    code = convert_to_hf.main(["--input_dir", str(ckpt), "--output_dir",
                               str(tmp_path / "hf"), *extra])
    assert code == 2
    assert needle in caplog.text
    assert not (tmp_path / "hf" / "model.safetensors").exists()


def random_hf_model(kind: str, **overrides: Any) -> Any:
    """A small HF model with every tensor random (HF's init leaves biases 0 and norms 1)."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    common = {"vocab_size": 96, "hidden_size": 64, "num_hidden_layers": 2,
              "num_attention_heads": 4, "max_position_embeddings": 32}
    if kind == "neox":
        options = {"intermediate_size": 256, "rotary_pct": 0.25, "rotary_emb_base": 1000,
                   "use_parallel_residual": True, "tie_word_embeddings": False, **overrides}
        config = GPTNeoXConfig(**common, **options)
        model = GPTNeoXForCausalLM(config)
    else:
        config = LlamaConfig(**common, intermediate_size=96, **overrides)
        model = LlamaForCausalLM(config)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def import_hf(tmp: Path, hf: Any, *args: str) -> Path:
    from tools import convert_from_hf

    hf.save_pretrained(str(tmp / "hf_in"))
    assert convert_from_hf.main(["--hf_dir", str(tmp / "hf_in"), "--output_dir",
                                 str(tmp / "ckpt"), *args]) == 0
    return tmp / "ckpt"


def loaded_model(ckpt: Path) -> tuple[ModelSpec, GPTModel]:
    """Our model from the checkpoint, its spec read back from the generated YAML."""
    from megatron.model.checkpoint_io import load_full_state_dict
    from megatron.neox_arguments import NeoXArgs

    train = ckpt / "train.yml"
    train.write_text(json.dumps(TRAIN))
    args = NeoXArgs.from_ymls([str(ckpt / "global_step0" / "configs" / "model.yml"), str(train)])
    spec = ModelSpec.from_args(args)
    model = GPTModel(spec, Group())
    model.load_state_dict(load_full_state_dict(ckpt, spec))
    return spec, model.eval()


IMPORTS = {
    "neox-tp2-pp1": ("neox", {}, ["--tp", "2", "--pp", "1"]),
    "neox-tied-sequential": ("neox", {"tie_word_embeddings": True,
                                      "use_parallel_residual": False}, []),
    # Multi-head LLaMA: q/k/v are fused per head, the layout only parity can check. eps 1e-8:
    # our rmsnorm adds eps to the RMS where HF adds it inside the square root.
    "llama-mha-tp2": ("llama", {"rms_norm_eps": 1e-8}, ["--tp", "2"]),
    "llama-gqa-biases-tied": ("llama", {"num_key_value_heads": 2, "rms_norm_eps": 1e-8,
                                        "attention_bias": True, "mlp_bias": True,
                                        "tie_word_embeddings": True}, ["--pp", "2"]),
}


@pytest.mark.parametrize("case", sorted(IMPORTS))
def test_imported_model_matches_hf_and_round_trips_bitwise(tmp_path: Path, case: str) -> None:
    from transformers import AutoModelForCausalLM

    kind, overrides, args = IMPORTS[case]
    original = random_hf_model(kind, **overrides)
    ckpt = import_hf(tmp_path, original, *args)
    spec, ours = loaded_model(ckpt)
    tokens = torch.randint(0, 96, (2, 16), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        got = ours((tokens, torch.arange(16).expand(2, 16)))
        assert (got - original(input_ids=tokens).logits).abs().max().item() <= 1e-4
    assert convert_to_hf.main(["--input_dir", str(ckpt), "--output_dir",
                               str(tmp_path / "hf_out")]) == 0
    back = AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf_out"))
    assert type(back) is type(original)
    before, after = original.state_dict(), back.state_dict()
    assert before.keys() == after.keys()
    for name, tensor in before.items():
        assert after[name].dtype == tensor.dtype and torch.equal(after[name], tensor), name


def test_import_writes_a_usable_config_and_tokenizer(tmp_path: Path) -> None:
    hf_dir = tmp_path / "hf_in"
    hf_dir.mkdir()
    (hf_dir / "tokenizer.json").write_bytes(TOKENIZER_JSON.read_bytes())
    ckpt = import_hf(tmp_path, random_hf_model("neox").to(torch.bfloat16), "--tp", "2")
    text = (ckpt / "global_step0" / "configs" / "model.yml").read_text()
    assert text.startswith("# Generated by tools/convert_from_hf.py")
    from megatron.neox_arguments import NeoXArgs

    layout = {**TRAIN, "model_parallel_size": 2, "num_gpus": 2}
    (tmp_path / "train.yml").write_text(json.dumps(layout))
    args = NeoXArgs.from_ymls([str(ckpt / "global_step0" / "configs" / "model.yml"),
                               str(tmp_path / "train.yml")])
    assert (args.rotary_pct, args.rotary_emb_base, args.gpt_j_residual) == (0.25, 1000, True)
    assert (args.no_weight_tying, args.intermediate_size, args.padded_vocab_size) == \
        (True, 256, 96)
    assert args.tokenizer_type == "HFTokenizer"
    assert Path(args.vocab_file) == (ckpt / "tokenizer.json").resolve()
    shard = torch.load(ckpt / "global_step0" / "mp_rank_01_model_states.pt", weights_only=True)
    qkv = shard["module"]["sequential.2.attention.query_key_value.weight"]
    assert qkv.shape == (96, 64) and qkv.dtype == torch.bfloat16


def test_unsupported_hf_models_are_refused(tmp_path: Path,
                                           caplog: pytest.LogCaptureFixture) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    from tools import convert_from_hf

    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64)).save_pretrained(
        str(tmp_path / "gpt2"))
    assert convert_from_hf.main(["--hf_dir", str(tmp_path / "gpt2"), "--output_dir",
                                 str(tmp_path / "out")]) == 2
    assert "model_type 'gpt2' is not supported" in caplog.text
    llama = random_hf_model("llama", rope_parameters={"rope_type": "linear", "factor": 2.0,
                                                      "rope_theta": 10000.0})
    llama.save_pretrained(str(tmp_path / "scaled"))
    assert convert_from_hf.main(["--hf_dir", str(tmp_path / "scaled"), "--output_dir",
                                 str(tmp_path / "out")]) == 2
    assert "rope_type 'linear'" in caplog.text


def test_mup_scaled_models_are_refused() -> None:
    base = dict(hidden_size=32, num_layers=1, num_attention_heads=4, padded_vocab_size=64,
                pos_emb="rotary")
    assert convert_to_hf.common_problems(ModelSpec(**base)) == []
    problems = convert_to_hf.common_problems(ModelSpec(**base, output_mult=0.25))
    assert any("use_mup" in p for p in problems)
