"""Augmented views (hf_encoderlock.lock.variants.augmentations): seeded, bounded, identity at zero strength."""

import torch

from hf_encoderlock.lock.variants.augmentations import AugmentationConfig, augmented_view


def test_augmented_view_is_seeded_bounded_and_identity_at_zero_strength():
    pixels = torch.rand(6, 3, 16, 16) * 2 - 1  # normalised with mean 0.5, std 0.5
    mean, std = torch.full((3, 1, 1), 0.5), torch.full((3, 1, 1), 0.5)
    config = AugmentationConfig()
    first = augmented_view(pixels, mean, std, config, torch.Generator().manual_seed(1))
    again = augmented_view(pixels, mean, std, config, torch.Generator().manual_seed(1))
    other = augmented_view(pixels, mean, std, config, torch.Generator().manual_seed(2))
    assert torch.equal(first, again) and not torch.allclose(first, other)
    assert first.shape == pixels.shape and first.min() >= -1 - 1e-6 and first.max() <= 1 + 1e-6
    identity = AugmentationConfig(crop_scale=(1.0, 1.0), brightness=0.0, contrast=0.0, saturation=0.0, noise=0.0)
    same = augmented_view(pixels, mean, std, identity, torch.Generator().manual_seed(1))
    assert torch.allclose(same, pixels, atol=1e-5)
