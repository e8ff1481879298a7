"""`NeoXArgs`: the complete, validated, frozen configuration of one run."""

from __future__ import annotations

import argparse
import base64
import dataclasses
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

from .build import build_values, raw_from_mapping
from .deepspeed import DeepSpeedArgs
from .deepspeed_dict import build_deepspeed_config
from .errors import ConfigError, Origin, Problem
from .load import load_files, overwrite
from .logging import LoggingArgs
from .lr import LRArgs
from .model import ModelArgs
from .optimizer import OptimizerArgs
from .other import OtherArgs
from .parallel import ParallelArgs
from .resources import Resources
from .runner import RunnerArgs
from .textgen import TextGenArgs
from .tokenizer import TokenizerArgs
from .training import TrainingArgs

CONFIG_SUFFIXES = (".yml", ".yaml", ".json")


def _encode(obj: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj, sort_keys=True).encode()).decode()


def _decode(text: str, flag: str) -> Any:
    try:
        return json.loads(base64.urlsafe_b64decode(text.encode()).decode())
    except (ValueError, UnicodeDecodeError) as err:
        raise ConfigError([Problem(flag, f"cannot be decoded: {err}")]) from err


class _ArgParser(argparse.ArgumentParser):
    """argparse that raises ConfigError instead of exiting."""

    def error(self, message: str) -> NoReturn:
        raise ConfigError([Problem("<command line>", message, hint=self.format_usage().strip())])


def resolve_config_path(name: str, conf_dir: str | None) -> str:
    """`-d DIR` prefixes each config name; a missing `.yml` suffix is added when needed."""
    path = str(Path(conf_dir) / name) if conf_dir else name
    if not path.endswith(CONFIG_SUFFIXES) and not Path(path).is_file():
        path += ".yml"
    return path


@dataclasses.dataclass(frozen=True, kw_only=True)
class NeoXArgs(RunnerArgs, DeepSpeedArgs, ModelArgs, ParallelArgs, OptimizerArgs, LRArgs,
               TokenizerArgs, TrainingArgs, LoggingArgs, TextGenArgs, OtherArgs):
    """Every GPT-NeoX key as a flat, typed, frozen attribute. Build it with `from_ymls`,
    `from_dict` or `consume_neox_args`; change it with `dataclasses.replace` and re-validation.
    """

    @classmethod
    def _from_raw(cls, raw: Any, resources: Resources | None, rederive: bool = True) -> NeoXArgs:
        values = build_values(cls, raw, resources, rederive=rederive)
        args = cls(**values)
        object.__setattr__(args, "_origins", dict(raw.origins))
        return args

    @classmethod
    def from_ymls(cls, paths: Sequence[str | Path], overwrite_values: Mapping[str, Any] | None
                  = None, resources: Resources | None = None) -> NeoXArgs:
        """Load, merge and validate config files in order; raises ConfigError listing every
        problem. `resources=None` detects them from the runner keys and this machine."""
        if isinstance(paths, str | Path):
            paths = [paths]
        raw = load_files(paths)
        if "config_files" not in raw.values and raw.texts:
            raw.values["config_files"] = dict(raw.texts)
            raw.origins["config_files"] = Origin("<loader>")
        overwrite(raw, overwrite_values)
        return cls._from_raw(raw, resources)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], resources: Resources | None = None) -> NeoXArgs:
        """Build from a mapping of GPT-NeoX keys (as if it were one config file)."""
        return cls._from_raw(raw_from_mapping(d, "<dict>"), resources)

    def replace(self, **changes: Any) -> NeoXArgs:
        """A copy with `changes` applied and re-validated (not re-derived), e.g. the
        worker's `padded_vocab_size`. Raises ConfigError for unknown keys or bad values."""
        raw = raw_from_mapping({**self.all_config, **changes}, "<replace>")
        raw.origins.update({k: v for k, v in self.origins.items() if k not in changes})
        return type(self)._from_raw(raw, None, rederive=False)

    @property
    def origins(self) -> dict[str, Origin]:
        """Where each user-given key came from (file and line)."""
        return dict(getattr(self, "_origins", {}))

    @property
    def all_config(self) -> dict[str, Any]:
        """Every value by key, JSON-able; what workers receive and checkpoints record."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @property
    def deepspeed_config(self) -> dict[str, Any]:
        """The dict for `deepspeed.initialize(config=...)`; see deepspeed_dict.py."""
        return build_deepspeed_config(self.all_config)

    def to_worker_argv(self) -> list[str]:
        """Arguments that hand this exact config to worker processes (GPT-NeoX's flags)."""
        return ["--megatron_config", _encode(self.all_config),
                "--deepspeed_config", _encode(self.deepspeed_config)]

    @classmethod
    def consume_neox_args(cls, argv: list[str] | None = None) -> NeoXArgs:
        """Rebuild the launcher's NeoXArgs in a worker: re-validate, never re-derive.

        Raises ConfigError when the rebuilt DeepSpeed dict differs from the one passed.
        DeepSpeed's `--local_rank=N` and any other extra flags are ignored.
        """
        parser = _ArgParser(prog="worker", add_help=False)
        parser.add_argument("--megatron_config", required=True)
        parser.add_argument("--deepspeed_config", required=True)
        known, _ = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
        values = _decode(known.megatron_config, "--megatron_config")
        passed = _decode(known.deepspeed_config, "--deepspeed_config")
        args = cls._from_raw(raw_from_mapping(values, "<megatron_config>"), None, rederive=False)
        if args.deepspeed_config != passed:
            raise ConfigError([Problem("--deepspeed_config", "differs from the DeepSpeed dict "
                                       "rebuilt from --megatron_config",
                                       hint="launcher and worker code versions differ?")])
        return args

    @staticmethod
    def consume_deepy_args(argv: list[str] | None = None) -> tuple[str, list[str]]:
        """Parse `deepy.py USER_SCRIPT [-d DIR] CONF [CONF ...]` into (script, config paths)."""
        user_script, paths, _ = NeoXArgs.consume_deepy_launch(argv)
        return user_script, paths

    @staticmethod
    def consume_deepy_launch(
        argv: list[str] | None = None,
    ) -> tuple[str, list[str], dict[str, Any]]:
        """Like `consume_deepy_args`, plus the command-line overrides GPT-NeoX's deepy takes.

        `-i/--sample_input_file`, `-o/--sample_output_file`, `--eval_tasks TASK...`,
        `--wandb_group`, `--wandb_team` override the config files' values.
        """
        parser = _ArgParser(prog="deepy.py", description="Launch training from config files.")
        parser.add_argument("user_script", help="worker script, e.g. train.py")
        parser.add_argument("-d", "--conf_dir", default=None, help="folder holding the configs")
        parser.add_argument("conf_file", nargs="+", help="config files, merged in order")
        parser.add_argument("-i", "--sample_input_file", default=None)
        parser.add_argument("-o", "--sample_output_file", default=None)
        parser.add_argument("--eval_tasks", nargs="+", default=None)
        parser.add_argument("--wandb_group", default=None)
        parser.add_argument("--wandb_team", default=None)
        known = parser.parse_args(sys.argv[1:] if argv is None else argv)
        names = ("sample_input_file", "sample_output_file", "eval_tasks", "wandb_group",
                 "wandb_team")
        overrides = {n: getattr(known, n) for n in names if getattr(known, n) is not None}
        paths = [resolve_config_path(c, known.conf_dir) for c in known.conf_file]
        return known.user_script, paths, overrides
