"""Coercion by annotation and unknown-key suggestions."""

from __future__ import annotations

from typing import Literal

import pytest

from megatron.neox_arguments import ConfigError, NeoXArgs
from megatron.neox_arguments.build import suggest
from megatron.neox_arguments.coerce import CoercionError, coerce_value

from .conftest import MINIMAL, ONE_CPU

STAGE = int | list[int] | Literal["all"] | None


@pytest.mark.parametrize("value,tp,key,expected", [
    (3, float, "", 3.0),
    (500000000.0, int, "", 500000000),
    (None, int | None, "", None),
    ("Cosine", Literal["linear", "cosine"], "", "cosine"),
    ("BFLOAT16", Literal["fp16", "fp32", "bf16"] | None, "precision", "bf16"),
    ("ALL", STAGE, "", "all"),
    ([1, 2], STAGE, "", [1, 2]),
    (["a", "b"], list[str] | None, "", ["a", "b"]),
    ({"a": 1}, dict[str, int], "", {"a": 1}),
    (True, bool, "", True),
])
def test_accepted(value, tp, key, expected):
    out = coerce_value(value, tp, key)
    assert out == expected and type(out) is type(expected)


@pytest.mark.parametrize("value,tp", [
    (True, int), (1.5, int), ("3", int), (1, bool), ("x", Literal["a", "b"]),
    (None, int), ([1, "x"], list[int]), (3, str), ({"a": 1}, list[int]),
])
def test_rejected(value, tp):
    with pytest.raises(CoercionError):
        coerce_value(value, tp)


def test_wrong_type_error_names_key_value_and_expectation():
    with pytest.raises(ConfigError) as err:
        NeoXArgs.from_dict({**MINIMAL, "hidden_dropout": "high"}, resources=ONE_CPU)
    (problem,) = err.value.problems
    assert problem.key == "hidden_dropout" and problem.value == "high"
    assert "expected float" in str(problem)


def test_literal_error_lists_allowed_values():
    with pytest.raises(ConfigError) as err:
        NeoXArgs.from_dict({**MINIMAL, "norm": "batchnorm"}, resources=ONE_CPU)
    text = str(err.value)
    assert "norm='batchnorm'" in text and "'layernorm'" in text and "'rmsnorm'" in text


def test_literal_is_stored_canonical():
    args = NeoXArgs.from_dict({**MINIMAL, "norm": "RMSNorm", "tokenizer_type": "hftokenizer"},
                              resources=ONE_CPU)
    assert args.norm == "rmsnorm" and args.tokenizer_type == "HFTokenizer"


@pytest.mark.parametrize("typo,expected", [
    ("num_atention_heads", "num_attention_heads"),
    ("hiden_size", "hidden_size"),
    ("train_micro_batch_size_per_gp", "train_micro_batch_size_per_gpu"),
    ("lr_decay_stlye", "lr_decay_style"),
])
def test_suggestion(typo, expected):
    assert suggest(typo, NeoXArgs.__dataclass_fields__) == f"did you mean '{expected}'?"


def test_unknown_key_error_names_file_line_and_suggestion(write):
    path = write("125M.yml", "num_layers: 2\nnum-atention-heads: 4\n")
    with pytest.raises(ConfigError) as err:
        NeoXArgs.from_ymls([path], resources=ONE_CPU)
    text = str(err.value)
    assert "125M.yml:2: num_atention_heads=4: unknown key (did you mean 'num_attention_heads'?)" \
        in text


def test_all_problems_reported_at_once(write):
    path = write("bad.yml", "num_layers: two\nhiden_size: 3\nnorm: nope\n")
    with pytest.raises(ConfigError) as err:
        NeoXArgs.from_ymls([path], resources=ONE_CPU)
    assert {p.key for p in err.value.problems} == {"num_layers", "hiden_size", "norm"}
