"""Learned input transforms: a disguise the attacker fits against the very encoder it attacks.

The fixed transforms of :mod:`hf_encoderlock.probing.transforms` guess what a lock missed (colour removed, channels
swapped, statistics matched). An attacker who holds labelled prohibited images can instead *learn* how to show them
to the locked encoder, as JailNTL (CVPR'25) learns a disguise against a non-transferable model. Two forms, each
fitted jointly with a linear head by gradient descent through the frozen encoder, the result kept within the images'
own pixel range:

- a colour map: every pixel's colour goes through the same small function (an affine map plus a residual MLP). It
  covers greyscale, channel permutations and per-domain statistics matching as special cases, and whatever mixture
  of them the lock leaves open;
- a patch map: every patch of the encoder's own patch grid goes through the same affine map of all its pixels. A
  patch-embedding encoder multiplies each patch by one matrix, so this map composed with the locked matrix can stand
  in for the original one: whatever a lock changed in its patch embedding, the attacker can learn back without
  touching a weight.

Once fitted, a map stands in front of the encoder's preprocessing like any fixed transform
(:func:`input_mapped_encoder`), and fresh probes are trained on what it produces.

The map is fitted on rows of the attacker's training split that no probe seed uses for validation (the caller picks
them, :func:`fit_rows`), so the choices made on validation stay honest; test images are never seen.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.nn import functional as F

from ..encoders import EncoderAdapter
from .transforms import TransformError


@dataclass(frozen=True)
class LearnedTransform:
    """A named learned transform and the strengths the attacker tries (for ``colour_map``: the hidden units of its
    residual MLP, 0 leaving an affine colour map; for ``patch_map``: the learning rate of its fit).
    ``needs_patches``: only for encoders with a patch size
    (:attr:`~hf_encoderlock.encoders.EncoderAdapter.patch_size`)."""

    name: str
    strengths: tuple[float, ...]
    description: str
    needs_patches: bool = False


LEARNED_TRANSFORMS: dict[str, LearnedTransform] = {
    "colour_map": LearnedTransform(
        "colour_map",
        (16.0,),
        "a per-pixel colour map (affine plus a residual MLP of this many hidden units) fitted with a linear head "
        "through the frozen encoder",
    ),
    # The rate was chosen on the attacker's validation split of three bounded.yaml locks (docs/THREAT_MODEL.md).
    "patch_map": LearnedTransform(
        "patch_map",
        (1e-3,),
        "a per-patch affine map on the encoder's own patch grid (all of a patch's pixels from all of them), fitted "
        "with a linear head through the frozen encoder at this learning rate; with the patch embedding it can stand "
        "in for any patch embedding",
        needs_patches=True,
    ),
}


@dataclass(frozen=True)
class LearnedMapFit:
    """How the attacker fits a learned map: a fixed budget, no early stopping (nothing is chosen on validation)."""

    epochs: int = 8
    batch_size: int = 128
    max_images: int = 1024
    learning_rate: float = 1e-2
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 2 or self.max_images < 2 or not self.learning_rate > 0:
            raise TransformError(
                "LearnedMapFit needs epochs >= 1, batch_size >= 2, max_images >= 2 and a positive learning_rate, got "
                f"{self}"
            )


class ColourMap(nn.Module):
    """The same colour function for every pixel: ``A x + b + W2 gelu(W1 x + c)`` on the encoder's raw pixel values
    (its preprocessing's normalisation undone), clamped to the pixel range of the images it was fitted on, then
    normalised again. It starts as the identity (``A = I``, ``b = 0``, ``W2 = 0``)."""

    def __init__(
        self, channels: int, hidden: int, mean: torch.Tensor, std: torch.Tensor, low: float, high: float
    ) -> None:
        super().__init__()
        self.affine = nn.Conv2d(channels, channels, 1)
        with torch.no_grad():
            self.affine.weight.copy_(torch.eye(channels).reshape(channels, channels, 1, 1))
            self.affine.bias.zero_()
        self.residual = None
        if hidden > 0:
            self.residual = nn.Sequential(nn.Conv2d(channels, hidden, 1), nn.GELU(), nn.Conv2d(hidden, channels, 1))
            nn.init.zeros_(self.residual[2].weight)
            nn.init.zeros_(self.residual[2].bias)
        self.register_buffer("mean", mean.reshape(channels, 1, 1).float().clone())
        # a processor that does not normalise reports std 1 (see EncoderAdapter.normalization)
        self.register_buffer("std", std.reshape(channels, 1, 1).float().clamp_min(1e-12).clone())
        self.low, self.high = float(low), float(high)

    def layout(self) -> dict[str, float | int]:
        """What rebuilds this map's structure (JSON-serialisable); its tensors are its ``state_dict``."""
        hidden = 0 if self.residual is None else self.residual[0].out_channels
        return {"channels": self.affine.in_channels, "hidden": hidden, "low": self.low, "high": self.high}

    @classmethod
    def from_layout(cls, layout: dict[str, float | int], state: dict[str, torch.Tensor]) -> ColourMap:
        """The map :meth:`layout` and ``state_dict`` describe, frozen, in eval mode."""
        channels = int(layout["channels"])
        colour_map = cls(
            channels, int(layout["hidden"]), torch.zeros(channels), torch.ones(channels), layout["low"], layout["high"]
        )
        colour_map.load_state_dict(state)
        return colour_map.requires_grad_(False).eval()

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        raw = pixel_values * self.std + self.mean
        mapped = self.affine(raw)
        if self.residual is not None:
            mapped = mapped + self.residual(raw)
        return (mapped.clamp(self.low, self.high) - self.mean) / self.std


class PatchMap(nn.Module):
    """The same affine map for every ``patch_size`` x ``patch_size`` patch of the image: each patch's raw pixel
    values (all channels, the preprocessing's normalisation undone) flattened, mapped, clamped to the pixel range of
    the images it was fitted on, then normalised again. It starts as the identity."""

    def __init__(
        self, channels: int, patch_size: int, mean: torch.Tensor, std: torch.Tensor, low: float, high: float
    ) -> None:
        super().__init__()
        if patch_size < 1:
            raise TransformError(f"a patch map needs a patch size >= 1, got {patch_size}")
        self.patch_size = int(patch_size)
        size = channels * self.patch_size**2
        self.linear = nn.Linear(size, size)
        with torch.no_grad():
            self.linear.weight.copy_(torch.eye(size))
            self.linear.bias.zero_()
        self.register_buffer("mean", mean.reshape(channels, 1, 1).float().clone())
        # a processor that does not normalise reports std 1 (see EncoderAdapter.normalization)
        self.register_buffer("std", std.reshape(channels, 1, 1).float().clamp_min(1e-12).clone())
        self.low, self.high = float(low), float(high)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        raw = pixel_values * self.std + self.mean
        side = self.patch_size
        patches = F.unfold(raw, side, stride=side)  # (batch, channels x side x side, patches)
        mapped = self.linear(patches.transpose(1, 2)).transpose(1, 2)
        image = F.fold(mapped, raw.shape[-2:], side, stride=side)
        return (image.clamp(self.low, self.high) - self.mean) / self.std


def fit_rows(num_rows: int, validation_rows: Sequence[np.ndarray], max_images: int, seed: int = 0) -> np.ndarray:
    """Up to ``max_images`` seeded rows of a training split of ``num_rows`` rows, none of them in any of
    ``validation_rows`` (each probe seed's validation part), sorted. Raises when fewer than two rows are left."""
    excluded = np.zeros(num_rows, dtype=bool)
    for rows in validation_rows:
        excluded[np.asarray(rows, dtype=np.int64)] = True
    free = np.flatnonzero(~excluded)
    if free.size < 2:
        raise TransformError(
            f"a learned transform needs at least 2 training rows outside every probe seed's validation part; "
            f"{free.size} of {num_rows} are left"
        )
    chosen = np.random.default_rng([seed, 2]).permutation(free)[:max_images]
    return np.sort(chosen)


def _pixels(encoder: EncoderAdapter, images: Sequence[Image.Image], batch_size: int) -> torch.Tensor:
    return torch.cat([encoder.preprocess(images[i : i + batch_size]) for i in range(0, len(images), batch_size)])


def _check_labels(pixels: torch.Tensor, labels: Sequence[int] | np.ndarray | torch.Tensor) -> torch.Tensor:
    targets = torch.as_tensor(np.asarray(labels), dtype=torch.long).to(pixels.device)
    if len(pixels) != len(targets) or len(pixels) < 2:
        raise TransformError(
            f"a learned map needs at least 2 images with one label each, got {len(pixels)} images and "
            f"{len(targets)} labels"
        )
    return targets


def fit_colour_map(
    encoder: EncoderAdapter,
    images: Sequence[Image.Image],
    labels: Sequence[int] | np.ndarray | torch.Tensor,
    hidden: int,
    fit: LearnedMapFit | None = None,
    num_classes: int | None = None,
) -> ColourMap:
    """:func:`fit_colour_map_to_pixels` on ``images`` prepared by ``encoder``'s own preprocessing."""
    if len(images) < 2:
        raise TransformError(f"a colour map needs at least 2 images, got {len(images)}")
    return fit_colour_map_to_pixels(encoder, _pixels(encoder, images, 256), labels, hidden, fit, num_classes)


def fit_colour_map_to_pixels(
    encoder: EncoderAdapter,
    pixels: torch.Tensor,
    labels: Sequence[int] | np.ndarray | torch.Tensor,
    hidden: int,
    fit: LearnedMapFit | None = None,
    num_classes: int | None = None,
) -> ColourMap:
    """Fit a :class:`ColourMap` (``hidden`` residual units) and a linear head on ``encoder``'s features of
    ``pixels`` (already preprocessed), by cross-entropy on ``labels`` (``num_classes``: their largest value + 1
    unless given). The encoder is not changed: its weights, ``requires_grad`` flags and train / eval mode are as
    before. Returns the map, frozen, in eval mode."""
    fit = fit or LearnedMapFit()
    if hidden < 0 or hidden != int(hidden):
        raise TransformError(f"colour_map takes a whole number >= 0 of hidden units as its strength, got {hidden!r}")
    channels = pixels.shape[1]
    return _fit_input_map(
        encoder, pixels, labels, lambda *scale: ColourMap(channels, int(hidden), *scale), fit, num_classes
    )


def patch_grid_problem(encoder: EncoderAdapter) -> str | None:
    """Why ``patch_map`` cannot run on ``encoder`` (no square patch size, or inputs its patches do not tile), or None
    when it can: the adaptive suite checks this before any work."""
    side = encoder.patch_size
    if side is None:
        return f"{encoder.name} reports no square patch size"
    _, height, width = encoder.input_shape()
    if height % side or width % side:
        return f"{encoder.name}'s {height}x{width} inputs do not divide into its {side}x{side} patches"
    return None


def fit_patch_map(
    encoder: EncoderAdapter,
    images: Sequence[Image.Image],
    labels: Sequence[int] | np.ndarray | torch.Tensor,
    patch_size: int | None = None,
    fit: LearnedMapFit | None = None,
    num_classes: int | None = None,
) -> PatchMap:
    """Fit a :class:`PatchMap` on ``patch_size`` patches (the encoder's own when None) and a linear head on
    ``encoder``'s features of ``images``, by cross-entropy on ``labels``, as :func:`fit_colour_map_to_pixels` does.
    The encoder is not changed. Returns the map, frozen, in eval mode."""
    fit = fit or LearnedMapFit()
    patch_size = patch_size or encoder.patch_size
    if patch_size is None:
        raise TransformError(f"patch_map needs an encoder with square patches; {encoder.name} reports no patch size")
    if len(images) < 2:
        raise TransformError(f"a patch map needs at least 2 images, got {len(images)}")
    pixels = _pixels(encoder, images, 256)
    height, width = pixels.shape[-2:]
    if height % patch_size or width % patch_size:
        raise TransformError(
            f"patch_map cuts images into {patch_size}x{patch_size} patches; {encoder.name} prepares {height}x{width} "
            "images, which do not divide into them"
        )
    channels = pixels.shape[1]
    return _fit_input_map(
        encoder, pixels, labels, lambda *scale: PatchMap(channels, patch_size, *scale), fit, num_classes
    )


def _fit_input_map(
    encoder: EncoderAdapter,
    pixels: torch.Tensor,
    labels: Sequence[int] | np.ndarray | torch.Tensor,
    make_map: Callable[[torch.Tensor, torch.Tensor, float, float], nn.Module],
    fit: LearnedMapFit,
    num_classes: int | None,
) -> nn.Module:
    """Fit the map ``make_map(mean, std, low, high)`` builds (the preprocessing's normalisation, the pixel range of
    ``pixels``) jointly with a fresh linear head through the frozen ``encoder``, in a seeded RNG fork, leaving the
    encoder's weights, flags and mode as they were.

    Hand-written torch rather than a Trainer: one small loop whose every batch goes through the frozen encoder.
    """
    targets = _check_labels(pixels, labels)
    mean, std = (t.to(pixels.device) for t in encoder.normalization())
    raw = pixels * std + mean
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(fit.seed)
        input_map = make_map(mean, std, float(raw.min()), float(raw.max())).to(pixels.device)
        backbone = encoder.backbone
        flags = {name: p.requires_grad for name, p in backbone.named_parameters()}
        was_training = backbone.training
        classes = num_classes or int(targets.max()) + 1
        # standardised features, as the probe suite's linear heads see them
        head = nn.Sequential(nn.BatchNorm1d(encoder.feature_dim, affine=False), nn.Linear(encoder.feature_dim, classes))
        head = head.to(pixels.device)
        optimizer = torch.optim.Adam([*input_map.parameters(), *head.parameters()], lr=fit.learning_rate)
        order = torch.Generator().manual_seed(fit.seed)
        try:
            backbone.requires_grad_(False)
            backbone.eval()
            for _ in range(fit.epochs):
                permutation = torch.randperm(len(pixels), generator=order).to(pixels.device)
                for start in range(0, len(pixels), fit.batch_size):
                    batch = permutation[start : start + fit.batch_size]
                    if len(batch) < 2:  # batch normalisation needs two rows
                        continue
                    features = encoder.features(input_map(pixels[batch]))
                    loss = F.cross_entropy(head(features), targets[batch])
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
        finally:
            for name, param in backbone.named_parameters():
                param.requires_grad_(flags[name])
            backbone.train(was_training)
        return input_map.requires_grad_(False).eval()


def fit_learned_transform(
    name: str,
    strength: float,
    encoder: EncoderAdapter,
    images: Sequence[Image.Image],
    labels: Sequence[int] | np.ndarray | torch.Tensor,
    seed: int = 0,
    num_classes: int | None = None,
) -> nn.Module:
    """The learned transform ``name`` of :data:`LEARNED_TRANSFORMS` at ``strength``, fitted through ``encoder`` on
    ``images`` (the attacker's fixed budget, seeded by ``seed``)."""
    if name == "colour_map":
        return fit_colour_map(encoder, images, labels, int(strength), LearnedMapFit(seed=seed), num_classes)
    if name == "patch_map":
        fit = LearnedMapFit(seed=seed, learning_rate=float(strength))
        return fit_patch_map(encoder, images, labels, None, fit, num_classes)
    raise TransformError(f"unknown learned transform {name!r}; choose one of {tuple(LEARNED_TRANSFORMS)}")


def input_mapped_encoder(encoder: EncoderAdapter, input_map: nn.Module, label: str) -> EncoderAdapter:
    """A view of ``encoder`` (the same weights, not copied) whose preprocessing applies ``input_map`` (a fitted
    colour or patch map) to every image; ``label`` names the map in the view's name."""

    def preprocess(images: Sequence[Image.Image]) -> torch.Tensor:
        with torch.no_grad():
            return input_map(encoder.preprocess(images))

    return EncoderAdapter(
        encoder.backbone, pooling=encoder.pooling, preprocess_fn=preprocess, name=f"{encoder.name} [{label}]"
    )
