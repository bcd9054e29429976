"""The unsupervised reference objective: InfoNCE between an image's features and those of an augmented view.

``total = L_A + log(1 + alpha * C_A / C_P)``: ``L_A`` is the authorized head's cross-entropy, ``C_A`` and ``C_P``
the InfoNCE losses of the authorized and prohibited batches against their augmented views (made in raw pixel
space by :mod:`hf_encoderlock.lock.variants.augmentations`). Minimising it pushes ``C_P`` up (a prohibited image's
features
stop identifying its augmented view) while ``C_A`` and ``L_A`` stay low. Weight scores use the gradient of
``C_P`` against that of ``L_A``. No prohibited label is ever read.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.nn import functional as F

from .base import LockHeads, LockObjective, ObjectiveTerms


def info_nce(features: torch.Tensor, views: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE: row ``i`` of ``features`` must pick row ``i`` of ``views`` among the batch (cosine
    similarities over ``temperature``)."""
    a = F.normalize(features.float(), dim=1)
    b = F.normalize(views.float(), dim=1)
    logits = a @ b.T / temperature
    targets = torch.arange(len(a), device=a.device)
    return 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets))


class ContrastiveObjective(LockObjective):
    """``L_A + log(1 + alpha * C_A / C_P)`` with InfoNCE ``C`` (the paper's unsupervised variant)."""

    name = "contrastive"
    lowers_prohibited = False  # the total falls as the prohibited term rises
    combines_poolings = True
    uses_views = True

    def __init__(self, alpha: float = 1e3, temperature: float = 0.8, eps: float = 1e-8) -> None:
        self.alpha = alpha
        self.temperature = temperature
        self.eps = eps

    @classmethod
    def from_config(cls, config: Any) -> ContrastiveObjective:
        return cls(alpha=config.alpha, temperature=config.contrastive_temperature, eps=config.objective_eps)

    def terms(
        self,
        authorized_features,
        authorized_labels,
        prohibited_features,
        prohibited_labels,
        heads: LockHeads,
        authorized_reference=None,
        authorized_views=None,
        prohibited_views=None,
    ):
        if authorized_views is None or prohibited_views is None:
            raise ValueError("the contrastive objective needs the features of augmented views of both batches")
        loss_a = F.cross_entropy(heads.authorized(authorized_features), authorized_labels)
        contrast_a = info_nce(authorized_features, authorized_views, self.temperature)
        contrast_p = info_nce(prohibited_features, prohibited_views, self.temperature)
        total = loss_a + torch.log1p(self.alpha * contrast_a / (contrast_p + self.eps))
        logs = {
            "loss_authorized": float(loss_a.detach()),
            "contrastive_authorized": float(contrast_a.detach()),
            "contrastive_prohibited": float(contrast_p.detach()),
        }
        return ObjectiveTerms(authorized=loss_a, prohibited=contrast_p, total=total, logs=logs)
