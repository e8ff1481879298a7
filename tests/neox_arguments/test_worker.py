"""Hand-off from deepy.py to workers, and deepy.py's own command line."""

from __future__ import annotations

import base64
import json

import pytest

from megatron.neox_arguments import ConfigError, NeoXArgs

from .conftest import EIGHT_GPUS, ONE_CPU, minimal_yaml


@pytest.fixture
def args(write) -> NeoXArgs:
    extra = "optimizer: {type: Adam, params: {lr: 1e-3}}\nattention_config: [[[flash], 2]]\n"
    return NeoXArgs.from_ymls([write("m.yml", minimal_yaml()), write("e.yml", extra)],
                              resources=ONE_CPU)


def test_argv_round_trip(args):
    argv = args.to_worker_argv()
    assert argv[0] == "--megatron_config" and argv[2] == "--deepspeed_config"
    rebuilt = NeoXArgs.consume_neox_args(["--local_rank=3", *argv])
    assert rebuilt == args
    assert rebuilt.deepspeed_config == args.deepspeed_config
    assert rebuilt.config_files == args.config_files


def test_payload_is_urlsafe_base64_json(args):
    _, payload, _, ds = args.to_worker_argv()
    assert set(payload) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_=")
    decoded = json.loads(base64.urlsafe_b64decode(payload))
    assert decoded["hidden_size"] == 64 and decoded["attention_config"] == ["global", "global"]
    assert json.loads(base64.urlsafe_b64decode(ds))["train_batch_size"] == 2


def test_worker_does_not_rederive(args):
    # Built without CUDA (gloo); a worker must keep that even though it re-validates.
    rebuilt = NeoXArgs.consume_neox_args(args.to_worker_argv())
    assert rebuilt.distributed_backend == "gloo" and rebuilt.global_num_gpus == 1


def test_mismatched_deepspeed_dict_is_refused(args):
    argv = args.to_worker_argv()
    other = NeoXArgs.from_dict({**args.all_config, "gradient_clipping": 0.5},
                               resources=EIGHT_GPUS)
    argv[3] = other.to_worker_argv()[3]
    with pytest.raises(ConfigError, match="--deepspeed_config"):
        NeoXArgs.consume_neox_args(argv)


def test_worker_revalidates(args):
    values = dict(args.all_config, hidden_size=66)
    payload = base64.urlsafe_b64encode(json.dumps(values).encode()).decode()
    with pytest.raises(ConfigError, match="hidden_size"):
        NeoXArgs.consume_neox_args(["--megatron_config", payload,
                                    "--deepspeed_config", args.to_worker_argv()[3]])


def test_missing_flag_is_a_config_error():
    with pytest.raises(ConfigError, match="--megatron_config"):
        NeoXArgs.consume_neox_args(["--local_rank=0"])


def test_deepy_args_with_conf_dir(tmp_path):
    (tmp_path / "125M.yml").write_text("")
    script, paths = NeoXArgs.consume_deepy_args(
        ["train.py", "-d", str(tmp_path), "125M", "local_setup.yml", "x.json"])
    assert script == "train.py"
    assert paths == [str(tmp_path / "125M.yml"), str(tmp_path / "local_setup.yml"),
                     str(tmp_path / "x.json")]


def test_deepy_args_plain_paths():
    script, paths = NeoXArgs.consume_deepy_args(
        ["train.py", "configs/cpu_small.yml", "configs/local_setup"])
    assert script == "train.py"
    assert paths == ["configs/cpu_small.yml", "configs/local_setup.yml"]


def test_deepy_args_need_a_config():
    with pytest.raises(ConfigError, match="conf_file"):
        NeoXArgs.consume_deepy_args(["train.py"])


def test_replace_revalidates(args):
    padded = args.replace(padded_vocab_size=50304)
    assert padded.padded_vocab_size == 50304 and args.padded_vocab_size is None
    assert padded.hidden_size == args.hidden_size and padded.origins["hidden_size"].line == 2
    with pytest.raises(ConfigError, match="hidden_size"):
        args.replace(hidden_size=66)
    with pytest.raises(ConfigError, match="unknown key"):
        args.replace(hiden_size=64)
