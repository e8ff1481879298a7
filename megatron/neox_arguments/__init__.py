"""The run configuration: `NeoXArgs` (every GPT-NeoX key, typed and validated) and helpers.

Pipeline: load (load.py) -> resolve keys and coerce (build.py, coerce.py) -> derive
(derive.py) -> validate (validate.py) -> freeze (NeoXArgs). Nothing here imports torch,
deepspeed or other megatron packages.
"""

from .arguments import NeoXArgs
from .errors import ConfigError, Origin, Problem
from .resources import Resources
from .support import missing_paths, performance_fallbacks, unsupported_features

__all__ = [
    "ConfigError",
    "NeoXArgs",
    "Origin",
    "Problem",
    "Resources",
    "missing_paths",
    "performance_fallbacks",
    "unsupported_features",
]
