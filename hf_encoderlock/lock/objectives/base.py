"""Lock objectives: what the masked updates minimise, and what weight selection scores.

An objective sees the encoder's features of an authorized batch and a prohibited batch, together with the
current heads (the authorized task head and the adversary head trained by the self-challenge), and returns
three numbers: the authorized term (small = authorized task intact), the prohibited term (the quantity whose
gradient, against the authorized one, scores weights) and the total loss that the update step minimises.
New objectives subclass :class:`LockObjective` in a module of their own and add one line to
:data:`hf_encoderlock.lock.objectives.OBJECTIVES`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn


@dataclass
class ObjectiveTerms:
    """The pieces of one objective evaluation (all scalars)."""

    authorized: torch.Tensor
    prohibited: torch.Tensor
    total: torch.Tensor
    logs: dict[str, float] = field(default_factory=dict)


@dataclass
class LockHeads:
    """Heads on top of the encoder's features; none of them is trained by the lock's update steps."""

    authorized: nn.Module
    adversary: nn.Module


class LockObjective(ABC):
    """A lock objective over encoder features and the current heads."""

    name: str = "base"
    #: When True, the trainer passes ``authorized_reference``: the unlocked encoder's features of the authorized
    #: batch (a frozen copy is kept for it).
    uses_reference_features: bool = False
    #: When True, the trainer also passes ``authorized_views`` and ``prohibited_views``: features of an augmented
    #: view of each batch (see :mod:`hf_encoderlock.lock.variants.augmentations`).
    uses_views: bool = False
    #: When True, the prohibited features may be several poolings concatenated (``prohibited_poolings``).
    combines_poolings: bool = False
    #: True when the total falls as the prohibited term falls (the update descends on it); False when the update
    #: raises it (the paper's and the contrastive objectives put it in a denominator).
    lowers_prohibited: bool = True

    @classmethod
    def from_config(cls, config: Any) -> LockObjective:
        """The objective configured from an :class:`~hf_encoderlock.lock.config.EncoderLockConfig`'s fields."""
        return cls()

    @abstractmethod
    def terms(
        self,
        authorized_features: torch.Tensor,
        authorized_labels: torch.Tensor,
        prohibited_features: torch.Tensor,
        prohibited_labels: torch.Tensor | None,
        heads: LockHeads,
        authorized_reference: torch.Tensor | None = None,
        **views: torch.Tensor,
    ) -> ObjectiveTerms:
        """Evaluate the objective on one pair of batches."""

    def state_dict(self) -> dict[str, Any]:
        """What the objective learned during a run (JSON-serialisable), saved in checkpoints for an exact resume."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:  # noqa: B027 - optional hook, stateless by default
        """Restore what :meth:`state_dict` returned."""
