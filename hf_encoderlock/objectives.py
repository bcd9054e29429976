"""Lock objectives: what the masked updates minimise, and what weight selection scores.

An objective sees the encoder's features of an authorized batch and a prohibited batch, together with the
current heads (the authorized task head and the adversary head trained by the self-challenge), and returns
three numbers: the authorized term (small = authorized task intact), the prohibited term (the quantity whose
gradient, against the authorized one, scores weights) and the total loss that the update step minimises.
New objectives subclass :class:`LockObjective` and register in :data:`OBJECTIVES`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F


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
    #: view of each batch (see :mod:`hf_encoderlock.augmentations`).
    uses_views: bool = False

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

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""


class PaperObjective(LockObjective):
    """The paper's supervised loss ``L_A + log(1 + alpha * L_A / L_P)``.

    ``L_A`` is the cross-entropy of the authorized head on authorized data and ``L_P`` the cross-entropy of the
    adversary head on prohibited data. Minimising the log term pushes ``L_P`` up, bounded and self-balancing
    against ``L_A``. Weight scores use the gradient of ``L_P`` against that of ``L_A``.
    """

    name = "paper"

    def __init__(self, alpha: float = 1e3, eps: float = 1e-8) -> None:
        self.alpha = alpha
        self.eps = eps

    def terms(
        self, authorized_features, authorized_labels, prohibited_features, prohibited_labels, heads,
        authorized_reference=None, **views,
    ):
        if prohibited_labels is None:
            raise ValueError("the paper's supervised objective needs prohibited labels")
        loss_a = F.cross_entropy(heads.authorized(authorized_features), authorized_labels)
        loss_p = F.cross_entropy(heads.adversary(prohibited_features), prohibited_labels)
        total = loss_a + torch.log1p(self.alpha * loss_a / (loss_p + self.eps))
        logs = {"loss_authorized": float(loss_a.detach()), "loss_prohibited": float(loss_p.detach())}
        return ObjectiveTerms(authorized=loss_a, prohibited=loss_p, total=total, logs=logs)


def build_objective(config) -> LockObjective:
    """The objective named by ``config.objective``, configured from the config's fields."""
    if config.objective == "paper":
        return PaperObjective(alpha=config.alpha, eps=config.objective_eps)
    if config.objective == "information":
        from .information import InformationObjective, InformationTermsConfig

        return InformationObjective(InformationTermsConfig.from_lock_config(config))
    if config.objective == "contrastive":
        from .contrastive import ContrastiveObjective

        return ContrastiveObjective(alpha=config.alpha, temperature=config.contrastive_temperature, eps=config.objective_eps)
    raise ValueError(f"unknown objective {config.objective!r}")
