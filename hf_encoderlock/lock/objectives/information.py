"""Class information in a batch of features, as differentiable measures, and the lock objective built on them.

The paper's loss makes the adversary head it trains against wrong; a fresh probe still finds the classes. The
:class:`InformationObjective` instead removes the class information itself from the prohibited features: on
batch-standardised features (so every measure is invariant to a per-dimension rescaling, which a probe undoes
for free) it sums

* :func:`ridge_r2`: the in-sample ridge R^2 of one-hot labels on the features (what a linear probe exploits;
  zero when no linear class information is left),
* :func:`class_mmd`: the MMD between each class's features and all features, Gaussian kernels at a few
  bandwidths around the median distance (any difference between the class-conditional distributions),
* :func:`soft_knn_excess`: the leave-one-out soft-nearest-neighbour agreement above chance (the local
  structure a kNN probe exploits),

each divided by its value on the unlocked encoder, so their weights are comparable. The authorized side is the
authorized head's cross-entropy, as in the paper.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch.nn import functional as F

from ..knobs import KnobGroup, knob
from .base import LockHeads, LockObjective, ObjectiveTerms

TERM_NAMES = ("r2", "mmd", "knn")


def standardize(features: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Per-dimension zero mean, unit variance over the batch."""
    centred = features - features.mean(dim=0, keepdim=True)
    return centred / (centred.pow(2).mean(dim=0, keepdim=True).sqrt() + eps)


# The smallest normalisation reference of a term. A term that starts below it holds next to no class information (a
# random-init encoder's MMD starts at about 0, or below: the estimate is unbiased); dividing by its first value would
# multiply the term, and its noise, by up to 1 / eps (a random-init ViT-B/16 blew the loss and its gradients up by
# orders of magnitude). The tuned victim's terms start well above it.
REFERENCE_FLOOR = 0.01


def whiten(features: torch.Tensor, shrinkage: float) -> torch.Tensor:
    """Standardised features decorrelated by the Cholesky factor of their shrunk correlation ``(1 - s) R + s I``.

    ``shrinkage`` 1 leaves them standardised. Below 1, distances approach the Mahalanobis distances a whitening probe
    sees, so class information in low-variance directions counts as much as in high-variance ones (Cholesky rather
    than an eigendecomposition: its backward is stable when eigenvalues are close; the distance-based measures are
    the same under any whitening rotation)."""
    z = standardize(features)
    if shrinkage >= 1:
        return z
    n, d = z.shape
    correlation = (1 - shrinkage) * (z.T @ z / n) + shrinkage * torch.eye(d, dtype=z.dtype, device=z.device)
    factor = torch.linalg.cholesky(correlation)
    return torch.linalg.solve_triangular(factor, z.T, upper=False).T


def _class_index(labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    classes, index = torch.unique(labels, return_inverse=True)
    return index, len(classes)


def ridge_r2(features: torch.Tensor, labels: torch.Tensor, ridge: float) -> torch.Tensor:
    """In-sample R^2 of centred one-hot labels regressed (ridge ``ridge``, relative to unit variance) on features."""
    n, d = features.shape
    index, num_classes = _class_index(labels)
    targets = F.one_hot(index, num_classes).to(features.dtype)
    targets = targets - targets.mean(dim=0, keepdim=True)
    gram = features.T @ features / n + ridge * torch.eye(d, dtype=features.dtype, device=features.device)
    coefficients = torch.linalg.solve(gram, features.T @ targets / n)
    explained = (targets * (features @ coefficients)).sum()
    return explained / targets.pow(2).sum().clamp_min(1e-12)


def _median_sq_distance(sq_distances: torch.Tensor) -> torch.Tensor:
    n = len(sq_distances)
    off_diagonal = sq_distances[~torch.eye(n, dtype=torch.bool, device=sq_distances.device)]
    return off_diagonal.detach().median().clamp_min(1e-12)


def _sq_distances(features: torch.Tensor) -> torch.Tensor:
    norms = features.pow(2).sum(dim=1)
    return (norms[:, None] + norms[None, :] - 2 * features @ features.T).clamp_min(0.0)


def class_mmd(features: torch.Tensor, labels: torch.Tensor, bandwidths: tuple[float, ...]) -> torch.Tensor:
    """Class-weighted squared MMD between each class's features and all features (off-diagonal estimates).

    Kernels: Gaussians whose squared bandwidths are ``b^2`` times the median squared pairwise distance, averaged.
    """
    n = len(features)
    sq = _sq_distances(features)
    scale = _median_sq_distance(sq)
    kernel = torch.stack([torch.exp(-sq / (2 * b * b * scale)) for b in bandwidths]).mean(dim=0)
    kernel = kernel - torch.diag_embed(torch.diagonal(kernel))  # drop self-similarities
    index, num_classes = _class_index(labels)
    members = F.one_hot(index, num_classes).to(features.dtype)  # n x C
    counts = members.sum(dim=0)
    valid = counts >= 2
    within = (members.T @ kernel @ members).diagonal() / (counts * (counts - 1)).clamp_min(1)
    cross = (members.T @ kernel).sum(dim=1) / (counts * (n - 1)).clamp_min(1)
    overall = kernel.sum() / (n * (n - 1))
    per_class = within - 2 * cross + overall
    return (per_class * counts / n)[valid].sum()


def soft_knn_excess(features: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """Leave-one-out soft-neighbour same-class probability above its label-independent value, floored at 0.

    Neighbour weights are a softmax of ``-d^2 / (temperature * median d^2)`` over the other points.
    """
    n = len(features)
    sq = _sq_distances(features)
    logits = -sq / (temperature * _median_sq_distance(sq))
    logits = logits.masked_fill(torch.eye(n, dtype=torch.bool, device=features.device), float("-inf"))
    # A softmax written out rather than Tensor.softmax: on CPU, the backward of torch's softmax over rows holding
    # -inf differs in the last bits between 1 and 2 threads, which the gradient-ratio scores amplify into different
    # masks. Subtracting the row max keeps it stable; exp(-inf) is exactly 0.
    exponentials = (logits - logits.amax(dim=1, keepdim=True)).exp()
    weights = exponentials / exponentials.sum(dim=1, keepdim=True)
    index, _ = _class_index(labels)
    same = (index[:, None] == index[None, :]).to(features.dtype)
    agreement = (weights * same).sum(dim=1)
    chance = (same.sum(dim=1) - 1) / (n - 1)
    return F.relu((agreement - chance).mean())


def feature_drift(features: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Mean squared change of features against the unlocked encoder's, relative to the reference's variance."""
    variance = (reference - reference.mean(dim=0, keepdim=True)).pow(2).sum(dim=1).mean()
    return (features - reference).pow(2).sum(dim=1).mean() / variance.clamp_min(1e-12)


@dataclass
class InformationTermsConfig(KnobGroup):
    """Knobs of :class:`InformationObjective`, each an ``EncoderLockConfig`` field ``info_<name>`` (see
    :mod:`hf_encoderlock.lock.knobs`); ``eps`` is the config's ``objective_eps``."""

    flag_prefix: ClassVar[str] = "info_"
    flag_help: ClassVar[str] = "objective='information': "

    r2_weight: float = knob(1.0, range="[0, inf)", help="weight of the prohibited features' ridge R^2 of the labels.")
    mmd_weight: float = knob(1.0, range="[0, inf)", help="weight of the class-vs-all MMD of the prohibited features.")
    knn_weight: float = knob(  # what a kNN probe exploits
        1.0, range="[0, inf)", help="weight of the soft-nearest-neighbour agreement above chance."
    )
    ridge: float = knob(1e-2, range="(0, inf)", help="ridge penalty of the R^2 (features standardised).")
    mmd_bandwidths: tuple[float, ...] = knob(
        (0.5, 1.0, 2.0),
        range="(0, inf)",
        help="Gaussian MMD bandwidths, as multiples of the median distance.",
    )
    knn_temperature: float = knob(
        0.1, range="(0, inf)", help="soft-neighbour temperature, relative to the median sq. distance."
    )
    authorized_weight: float = knob(1.0, range="[0, inf)", help="weight of the authorized head's cross-entropy.")
    preserve_weight: float = knob(  # hold authorized features near the unlocked encoder's
        1.0,
        range="[0, inf)",
        help="weight of the authorized features' drift from the unlocked encoder (0: off; > 0 keeps a frozen copy "
        "of the encoder).",
    )
    # 1: standardised features; below 1: (partly) whitened, as a whitening probe sees them. Whitening won only with the
    # doubled prohibited batch, which the main job's time ruled out (docs/DEFAULT_LOCK.md, 'Whitened measures').
    # 0 would need a full-rank batch correlation: singular whenever features outnumber the batch.
    whitening_shrinkage: float = knob(
        1.0,
        range="(0, 1]",
        help="prohibited features are whitened with their correlation shrunk this far towards the identity before "
        "every measure, in (0, 1] (1: standardised only; below 1, class information in low-variance directions "
        "counts, as it does for a probe on whitened features).",
    )
    eps: float = 1e-8
    weights: dict[str, float] = field(init=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.weights = {"r2": self.r2_weight, "mmd": self.mmd_weight, "knn": self.knn_weight}

    @classmethod
    def joint_problems(cls, values: dict[str, Any], prefix: str) -> list[str]:
        """The prohibited side needs at least one term."""
        if values["r2_weight"] + values["mmd_weight"] + values["knn_weight"] > 0:
            return []
        return [f"{prefix}r2_weight, {prefix}mmd_weight and {prefix}knn_weight must not all be 0"]

    @classmethod
    def from_lock_config(cls, config: Any, **values: Any) -> InformationTermsConfig:
        """The terms as an ``EncoderLockConfig`` sets them (its ``info_*`` fields and ``objective_eps``)."""
        return super().from_lock_config(config, **{"eps": config.objective_eps, **values})


class InformationObjective(LockObjective):
    """Remove class information from prohibited features; keep the authorized head's cross-entropy low.

    ``prohibited`` = sum over the enabled terms of ``weight * term / term_at_first_call`` (the first call sees
    the unlocked encoder, so each normalised term starts at 1; a first value below :data:`REFERENCE_FLOOR` is
    replaced by it); ``authorized`` = the authorized head's CE;
    ``total`` = ``authorized_weight * authorized + prohibited``. With ``preserve_weight > 0`` the authorized term also
    holds ``preserve_weight`` times the authorized features' :func:`feature_drift` from the unlocked encoder.
    """

    name = "information"
    combines_poolings = True

    def __init__(self, config: InformationTermsConfig | None = None) -> None:
        self.config = config or InformationTermsConfig()
        self.reference: dict[str, float] = {}
        self.uses_reference_features = self.config.preserve_weight > 0

    @classmethod
    def from_config(cls, config: Any) -> InformationObjective:
        return cls(InformationTermsConfig.from_lock_config(config))

    def state_dict(self) -> dict[str, Any]:
        """The normalisation reference (each term's value at the first call)."""
        return {"reference": dict(self.reference)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.reference = {name: float(value) for name, value in state.get("reference", {}).items()}

    def measures(self, features: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """The enabled raw information measures of one labelled batch (standardised, or whitened, inside)."""
        config, z = self.config, whiten(features.float(), self.config.whitening_shrinkage)
        compute = {
            "r2": lambda: ridge_r2(z, labels, config.ridge),
            "mmd": lambda: class_mmd(z, labels, config.mmd_bandwidths),
            "knn": lambda: soft_knn_excess(z, labels, config.knn_temperature),
        }
        return {name: compute[name]() for name in TERM_NAMES if config.weights[name] > 0}

    def terms(
        self,
        authorized_features,
        authorized_labels,
        prohibited_features,
        prohibited_labels,
        heads: LockHeads,
        authorized_reference: torch.Tensor | None = None,
        **views,
    ):
        if prohibited_labels is None:
            raise ValueError("the information objective needs prohibited labels (or pseudo-labels)")
        config = self.config
        loss_a = F.cross_entropy(heads.authorized(authorized_features), authorized_labels)
        logs = {}
        if config.preserve_weight > 0:
            if authorized_reference is None:
                raise ValueError("info_preserve_weight > 0 needs the unlocked encoder's authorized features")
            drift = feature_drift(authorized_features.float(), authorized_reference.float())
            logs["authorized_drift"] = float(drift.detach())
            loss_a = loss_a + config.preserve_weight * drift
        raw = self.measures(prohibited_features, prohibited_labels)
        for name, value in raw.items():
            self.reference.setdefault(name, max(float(value.detach()), REFERENCE_FLOOR, config.eps))
        prohibited = sum(config.weights[name] * value / self.reference[name] for name, value in raw.items())
        total = config.authorized_weight * loss_a + prohibited
        logs.update(loss_authorized=float(loss_a.detach()), prohibited_information=float(prohibited.detach()))
        logs.update({f"info_{name}": float(value.detach()) for name, value in raw.items()})
        return ObjectiveTerms(authorized=loss_a, prohibited=prohibited, total=total, logs=logs)
