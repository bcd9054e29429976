"""Augmented views for the contrastive (unsupervised reference) objective, made in raw pixel space.

Batches in a lock run hold *normalised* pixel values. An augmented view undoes the processor's normalisation,
applies a per-image random resized crop, brightness / contrast / saturation jitter and Gaussian noise to the raw
0-1 pixels (as a torchvision pipeline on the raw image would), clamps to [0, 1] and normalises again. Everything is
batched, runs on the batch's device and draws from an explicit ``torch.Generator`` (no global random state).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch.nn import functional as F

from ..knobs import KnobGroup, knob

LUMA_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R BT.601 weights of the grey image that saturation jitter mixes in


@dataclass
class AugmentationConfig(KnobGroup):
    """Strengths of the augmented view, each an ``EncoderLockConfig`` field ``augment_<name>`` (see
    :mod:`hf_encoderlock.lock.knobs`)."""

    flag_prefix: ClassVar[str] = "augment_"
    flag_help: ClassVar[str] = "objective='contrastive': "

    crop_scale: tuple[float, float] = knob(
        (0.6, 1.0),
        range="(0, 1]",
        help="area range of the random resized crop of an augmented view.",
    )
    brightness: float = knob(0.4, range="[0, inf)", help="brightness jitter (multiplicative, +-).")
    contrast: float = knob(0.4, range="[0, inf)", help="contrast jitter (multiplicative, +-).")
    saturation: float = knob(0.4, range="[0, inf)", help="saturation jitter (multiplicative, +-).")
    noise: float = knob(0.02, range="[0, inf)", help="std of Gaussian pixel noise (raw 0-1 scale).")

    @classmethod
    def joint_problems(cls, values: dict[str, Any], prefix: str) -> list[str]:
        """A crop range runs from its low end up."""
        low, high = values["crop_scale"]
        if low <= high:
            return []
        return [f"{prefix}crop_scale must be [low, high] with low <= high, got {values['crop_scale']!r}"]


def _uniform(n: int, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=generator)


def random_resized_crop(raw: torch.Tensor, scale: tuple[float, float], generator: torch.Generator) -> torch.Tensor:
    """Per-image random square crop covering ``scale`` of the area, resized back to the input size (bilinear)."""
    n = len(raw)
    side = _uniform(n, scale[0], scale[1], generator).sqrt()
    shift = (1 - side)[:, None] * (2 * torch.rand(n, 2, generator=generator) - 1)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = side
    theta[:, 1, 1] = side
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta.to(raw), list(raw.shape), align_corners=False)
    return F.grid_sample(raw, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def colour_jitter(raw: torch.Tensor, config: AugmentationConfig, generator: torch.Generator) -> torch.Tensor:
    """Brightness, contrast and saturation factors drawn per image from ``1 +- strength``."""
    n = len(raw)

    def factors(strength: float) -> torch.Tensor:
        return _uniform(n, 1 - strength, 1 + strength, generator).to(raw).view(n, 1, 1, 1)

    out = raw * factors(config.brightness)
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    out = mean + (out - mean) * factors(config.contrast)
    if out.shape[1] == 3:
        grey = (out * torch.tensor(LUMA_WEIGHTS).to(raw).view(1, 3, 1, 1)).sum(dim=1, keepdim=True)
        out = grey + (out - grey) * factors(config.saturation)
    return out


def augmented_view(
    pixel_values: torch.Tensor,
    mean: torch.Tensor,
    std: torch.Tensor,
    config: AugmentationConfig,
    generator: torch.Generator,
) -> torch.Tensor:
    """One augmented view of a batch of normalised pixel values (``mean``/``std``: the processor's, ``(C,1,1)``)."""
    mean, std = mean.to(pixel_values), std.to(pixel_values)
    raw = (pixel_values * std + mean).clamp(0, 1)
    raw = random_resized_crop(raw, config.crop_scale, generator)
    raw = colour_jitter(raw, config, generator)
    if config.noise > 0:
        raw = raw + config.noise * torch.randn(raw.shape, generator=generator).to(raw)
    return (raw.clamp(0, 1) - mean) / std
