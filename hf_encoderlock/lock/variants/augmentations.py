"""Augmented views for the contrastive (unsupervised reference) objective, made in raw pixel space.

Batches in a lock run hold *normalised* pixel values. An augmented view undoes the processor's normalisation,
applies a per-image random resized crop, brightness / contrast / saturation jitter and Gaussian noise to the raw
0-1 pixels (as a torchvision pipeline on the raw image would), clamps to [0, 1] and normalises again. Everything is
batched, runs on the batch's device and draws from an explicit ``torch.Generator`` (no global random state).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F

LUMA_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R BT.601 weights of the grey image that saturation jitter mixes in


@dataclass
class AugmentationConfig:
    """Strengths of the augmented view (filled from ``EncoderLockConfig`` by :meth:`from_lock_config`)."""

    crop_scale: tuple[float, float] = (0.6, 1.0)
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    noise: float = 0.02

    @classmethod
    def from_lock_config(cls, config) -> AugmentationConfig:
        return cls(
            crop_scale=tuple(config.augment_crop_scale),
            brightness=config.augment_brightness,
            contrast=config.augment_contrast,
            saturation=config.augment_saturation,
            noise=config.augment_noise,
        )


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
