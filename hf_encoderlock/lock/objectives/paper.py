"""The paper's supervised objective (EncoderLock, NDSS 2025, Eq. 3)."""

from __future__ import annotations

from typing import Any

import torch
from torch.nn import functional as F

from .base import LockObjective, ObjectiveTerms


class PaperObjective(LockObjective):
    """The paper's supervised loss ``L_A + log(1 + alpha * L_A / L_P)``.

    ``L_A`` is the cross-entropy of the authorized head on authorized data and ``L_P`` the cross-entropy of the
    adversary head on prohibited data. Minimising the log term pushes ``L_P`` up, bounded and self-balancing
    against ``L_A``. Weight scores use the gradient of ``L_P`` against that of ``L_A``.
    """

    name = "paper"
    lowers_prohibited = False  # the total falls as the prohibited term rises

    def __init__(self, alpha: float = 1e3, eps: float = 1e-8) -> None:
        self.alpha = alpha
        self.eps = eps

    @classmethod
    def from_config(cls, config: Any) -> PaperObjective:
        return cls(alpha=config.alpha, eps=config.objective_eps)

    def terms(
        self,
        authorized_features,
        authorized_labels,
        prohibited_features,
        prohibited_labels,
        heads,
        authorized_reference=None,
        **views,
    ):
        if prohibited_labels is None:
            raise ValueError("the paper's supervised objective needs prohibited labels")
        loss_a = F.cross_entropy(heads.authorized(authorized_features), authorized_labels)
        loss_p = F.cross_entropy(heads.adversary(prohibited_features), prohibited_labels)
        total = loss_a + torch.log1p(self.alpha * loss_a / (loss_p + self.eps))
        logs = {"loss_authorized": float(loss_a.detach()), "loss_prohibited": float(loss_p.detach())}
        return ObjectiveTerms(authorized=loss_a, prohibited=loss_p, total=total, logs=logs)
