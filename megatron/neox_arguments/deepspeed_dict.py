"""The config dict handed to `deepspeed.initialize`.

It holds every DeepSpeed-group value that is set (given by the user, derived, or a GPT-NeoX
default that is not None), with `deepspeed_extra_args` merged on top. It is never built by
comparing against defaults: that is how GPT-NeoX loses `gradient_clipping: 1.0`.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping
from typing import Any

from .deepspeed import DeepSpeedArgs

DEEPSPEED_KEYS: tuple[str, ...] = tuple(
    f.name for f in dataclasses.fields(DeepSpeedArgs) if not f.metadata.get("neox_only")
)


# Keys DeepSpeed 0.19 refuses outright, even when off; off is what it does anyway, so an
# off value is left out rather than failing a GPT-NeoX config that spells it out.
REMOVED_WHEN_OFF: tuple[str, ...] = ("sparse_gradients",)


def build_deepspeed_config(values: Mapping[str, Any]) -> dict[str, Any]:
    """DeepSpeed dict from the complete value mapping of a NeoXArgs."""
    config = {key: copy.deepcopy(values[key]) for key in DEEPSPEED_KEYS
              if values.get(key) is not None
              and not (key in REMOVED_WHEN_OFF and not values[key])}
    config.update(copy.deepcopy(values.get("deepspeed_extra_args") or {}))
    return config
