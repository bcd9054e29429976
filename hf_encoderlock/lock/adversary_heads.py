"""The knobs of the self-challenge's adversary heads: the ensemble of fresh prohibited heads fitted on the lock
data's features when a challenge is due (``challenge_every``), the strongest of which the next updates fight."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..probing.heads import GRADIENT_KINDS
from .knobs import KnobGroup, knob

ADVERSARY_KINDS = GRADIENT_KINDS  # the self-challenge trains heads by gradient descent (no kNN)


@dataclass
class AdversaryConfig(KnobGroup):
    """The ensemble of a self-challenge: ``kinds`` x ``seeds`` x ``learning_rates`` heads, each trained for
    ``epochs``; each knob is an ``EncoderLockConfig`` field ``adversary_<name>`` (see
    :mod:`hf_encoderlock.lock.knobs`)."""

    flag_prefix: ClassVar[str] = "adversary_"

    kinds: list[str] = knob(
        default_factory=lambda: list(ADVERSARY_KINDS),
        choices=ADVERSARY_KINDS,
        help=f"Adversary head kinds from {ADVERSARY_KINDS}.",
    )
    seeds: int = knob(2, range="[1, inf)", help="Seeds per adversary head kind.")
    learning_rates: list[float] = knob(
        default_factory=lambda: [1e-2, 1e-3], range="(0, inf)", help="Learning-rate grid for adversary heads."
    )
    epochs: int = knob(100, range="[1, inf)", help="Full-batch epochs per adversary head.")
    hidden_size: int = knob(256, range="[1, inf)", help="Hidden width of MLP adversary heads.")
