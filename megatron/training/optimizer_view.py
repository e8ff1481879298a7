"""A ``torch.optim.Optimizer`` that shows another optimizer's groups and state as its own.

Why: our optimizer wrappers (:class:`~megatron.training.master_weights.MasterWeights`, the
sharded step) must be ``torch.optim.Optimizer`` instances for DeepSpeed to take them as client
optimizers, while the LR schedule, DeepSpeed's ``get_lr`` and checkpoints must read and write
the optimizer that actually steps (an LR schedule sets ``param_groups[i]["lr"]``).
"""

from __future__ import annotations

from typing import Any

import torch

Groups = list[dict[str, Any]]


class OptimizerView(torch.optim.Optimizer):
    """``param_groups``, ``state`` and ``defaults`` are those of :meth:`viewed`."""

    def viewed(self) -> Any:
        """The optimizer whose groups and state these are."""
        raise NotImplementedError

    @property
    def param_groups(self) -> Groups:  # type: ignore[override]
        return self.viewed().param_groups

    @param_groups.setter
    def param_groups(self, value: Groups) -> None:
        self.viewed().param_groups = value

    @property
    def state(self) -> Any:  # type: ignore[override]
        return self.viewed().state

    @property
    def defaults(self) -> dict[str, Any]:  # type: ignore[override]
        return self.viewed().defaults
