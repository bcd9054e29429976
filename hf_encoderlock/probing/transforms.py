"""Input transformations: an attacker who cannot change the encoder can change what it is shown.

A lock keeps the authorized domain's features and scrambles the prohibited one's, so an attacker who knows the
method tries to make prohibited images look more like authorized ones (or at least unlike what the lock trained
against): colour removed or permuted, inverted, jittered, equalised, resampled, or with per-channel statistics
matched to a small sample of the authorized domain. Every transform maps a PIL image to a PIL image of the same size
and mode, and is applied alike to the attacker's training, validation and test images (:func:`transformed_encoder`
puts it in front of the encoder's preprocessing), so the probe learns on what it is scored on.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from datasets import Dataset, concatenate_datasets
from PIL import Image, ImageEnhance, ImageOps

from ..encoders import EncoderAdapter


class TransformError(ValueError):
    """A transform asked for with an unknown name, an unusable strength or without the data it needs."""


@dataclass(frozen=True)
class ChannelStats:
    """Per-channel mean and standard deviation (0-255 scale) of a sample of images, e.g. 1% of the authorized
    domain."""

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def of_images(cls, images: Sequence[Image.Image]) -> ChannelStats:
        if not images:
            raise TransformError("channel statistics need at least one image")
        pixels = np.concatenate([_rgb_array(image).reshape(-1, 3) for image in images])
        return cls(pixels.mean(axis=0), pixels.std(axis=0))


@dataclass(frozen=True)
class TransformContext:
    """What a transform may use besides the image: its row's seeded generator, the reference statistics and the
    attacked domain's own statistics."""

    rng: np.random.Generator
    reference: ChannelStats | None = None
    source: ChannelStats | None = None


def _rgb_array(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.float32)


def _back(array: np.ndarray, like: Image.Image) -> Image.Image:
    rgb = Image.fromarray(np.clip(np.rint(array), 0, 255).astype(np.uint8), "RGB")
    return rgb if like.mode == "RGB" else rgb.convert(like.mode)


def greyscale(image: Image.Image, strength: float, context: TransformContext) -> Image.Image:
    """Luminance only (``strength`` ignored: 1)."""
    return image.convert("L").convert(image.mode) if image.mode != "L" else image.copy()


PERMUTATIONS = ((0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0))


def permute_channels(image: Image.Image, strength: float, context: TransformContext) -> Image.Image:
    """RGB channels reordered: ``strength`` 1-5 picks one of the five non-identity permutations."""
    order = PERMUTATIONS[int(strength) - 1]
    return _back(_rgb_array(image)[..., list(order)], image)


def invert(image: Image.Image, strength: float, context: TransformContext) -> Image.Image:
    """Photographic negative (``strength`` ignored: 1)."""
    return _back(255.0 - _rgb_array(image), image)


def colour_jitter(image: Image.Image, strength: float, context: TransformContext) -> Image.Image:
    """Brightness, contrast, saturation and hue each drawn within ``strength`` (a share, e.g. 0.4) per image."""
    rgb = image.convert("RGB")
    for enhancer in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        rgb = enhancer(rgb).enhance(float(context.rng.uniform(1 - strength, 1 + strength)))
    hsv = np.asarray(rgb.convert("HSV")).copy()
    shift = int(round(context.rng.uniform(-strength / 2, strength / 2) * 255))
    hsv[..., 0] = (hsv[..., 0].astype(np.int32) + shift) % 256
    rgb = Image.fromarray(hsv, "HSV").convert("RGB")
    return rgb if image.mode == "RGB" else rgb.convert(image.mode)


def equalize(image: Image.Image, strength: float, context: TransformContext) -> Image.Image:
    """Histogram equalisation per channel (``strength`` ignored: 1)."""
    return ImageOps.equalize(image.convert("RGB")).convert(image.mode)


def resample(image: Image.Image, strength: float, context: TransformContext) -> Image.Image:
    """Down-sampled by ``strength`` (e.g. 2: half the side), then up-sampled back (bilinear)."""
    width, height = image.size
    small = image.resize((max(1, round(width / strength)), max(1, round(height / strength))), Image.BILINEAR)
    return small.resize((width, height), Image.BILINEAR)


def match_domain_stats(image: Image.Image, strength: float, context: TransformContext) -> Image.Image:
    """Per-channel statistics of the attacked domain mapped onto the reference's, blended by ``strength`` (0-1)."""
    if context.reference is None or context.source is None:
        raise TransformError("match_domain_stats needs reference (authorized) and source channel statistics")
    pixels = _rgb_array(image)
    matched = (pixels - context.source.mean) / np.maximum(context.source.std, 1e-6)
    matched = matched * context.reference.std + context.reference.mean
    return _back(strength * matched + (1 - strength) * pixels, image)


def match_image_stats(image: Image.Image, strength: float, context: TransformContext) -> Image.Image:
    """Each image's own per-channel statistics mapped onto the reference's, blended by ``strength`` (0-1)."""
    if context.reference is None:
        raise TransformError("match_image_stats needs reference (authorized) channel statistics")
    pixels = _rgb_array(image)
    flat = pixels.reshape(-1, 3)
    matched = (pixels - flat.mean(axis=0)) / np.maximum(flat.std(axis=0), 1e-6)
    matched = matched * context.reference.std + context.reference.mean
    return _back(strength * matched + (1 - strength) * pixels, image)


@dataclass(frozen=True)
class InputTransform:
    """A named input transformation and the strengths the attacker tries."""

    name: str
    apply: Callable[[Image.Image, float, TransformContext], Image.Image]
    strengths: tuple[float, ...]
    description: str
    needs_reference: bool = False
    #: the strengths the transform accepts (inclusive), and whether they must be whole numbers
    limits: tuple[float, float] = (0.0, float("inf"))
    whole: bool = False

    def strength_problem(self, strength: float) -> str | None:
        """Why ``strength`` cannot be used with this transform, or ``None``."""
        low, high = self.limits
        if not np.isfinite(strength) or not low <= strength <= high or (self.whole and strength != int(strength)):
            kind = "a whole number" if self.whole else "a number"
            return f"transform {self.name!r} takes {kind} from {low:g} to {high:g} as its strength, got {strength!r}"
        return None


TRANSFORMS: dict[str, InputTransform] = {
    t.name: t
    for t in (
        InputTransform("greyscale", greyscale, (1.0,), "luminance only"),
        # the red-blue swap and both rotations (any of the five orders can be asked for; these three keep the main
        # job's attacker within its time budget)
        InputTransform(
            "permute_channels",
            permute_channels,
            (5.0, 3.0, 4.0),
            "RGB channels reordered",
            limits=(1.0, float(len(PERMUTATIONS))),
            whole=True,
        ),
        InputTransform("invert", invert, (1.0,), "photographic negative"),
        InputTransform(
            "colour_jitter", colour_jitter, (0.2,), "random brightness, contrast, saturation, hue", limits=(0.0, 1.0)
        ),
        InputTransform("equalize", equalize, (1.0,), "histogram equalisation per channel"),
        InputTransform(
            "resample", resample, (2.0,), "down-sampled by this factor, then up-sampled", limits=(1.0, float("inf"))
        ),
        InputTransform(
            "match_domain_stats",
            match_domain_stats,
            (1.0,),
            "domain's per-channel mean/std mapped to a 1% authorized sample's",
            needs_reference=True,
            limits=(0.0, 1.0),
        ),
        InputTransform(
            "match_image_stats",
            match_image_stats,
            (1.0,),
            "each image's per-channel mean/std mapped to a 1% authorized sample's",
            needs_reference=True,
            limits=(0.0, 1.0),
        ),
    )
}


def _checked(transform: str, reference: ChannelStats | None) -> InputTransform:
    if transform not in TRANSFORMS:
        raise TransformError(f"unknown transform {transform!r}; choose one of {sorted(TRANSFORMS)}")
    spec = TRANSFORMS[transform]
    if spec.needs_reference and reference is None:
        raise TransformError(f"transform {transform!r} needs channel statistics of an authorized sample (reference=)")
    return spec


def apply_transform(
    images: Sequence[Image.Image],
    transform: str,
    strength: float,
    seed: int = 0,
    reference: ChannelStats | None = None,
    source: ChannelStats | None = None,
) -> list[Image.Image]:
    """``images`` with ``transform`` at ``strength``; a randomised transform draws from a generator seeded by ``seed``
    and the image's own pixels, so an image is transformed the same way wherever it appears."""
    spec = _checked(transform, reference)
    problem = spec.strength_problem(float(strength))
    if problem:
        raise TransformError(problem)
    out = []
    for image in images:
        rng = np.random.default_rng([seed, zlib.crc32(image.tobytes())])
        out.append(spec.apply(image, float(strength), TransformContext(rng, reference, source)))
    return out


def transformed_encoder(
    encoder: EncoderAdapter,
    transform: str,
    strength: float,
    seed: int = 0,
    reference: ChannelStats | None = None,
    source: ChannelStats | None = None,
) -> EncoderAdapter:
    """A view of ``encoder`` (the same weights, not copied) whose preprocessing transforms every image first.

    Whatever the attacker extracts through it (training, validation and test images alike) is transformed the same
    way; transforming at preprocessing time avoids re-encoding every image of a dataset for each transform.
    """
    _checked(transform, reference)

    def preprocess(images: Sequence[Image.Image]):
        return encoder.preprocess(apply_transform(images, transform, strength, seed, reference, source))

    return EncoderAdapter(
        encoder.backbone,
        pooling=encoder.pooling,
        preprocess_fn=preprocess,
        name=f"{encoder.name} [{transform} {strength:g}]",
    )


def domain_stats(dataset: Dataset, image_column: str = "image", max_images: int = 500, seed: int = 0) -> ChannelStats:
    """Channel statistics of up to ``max_images`` seeded rows of ``dataset``."""
    rows = np.random.default_rng(seed).permutation(len(dataset))[:max_images]
    return ChannelStats.of_images([dataset[int(i)][image_column] for i in rows])


def parse_transform_spec(spec: str) -> tuple[str, float]:
    """``"name"`` or ``"name:strength"`` -> (name, strength); a bare name takes the transform's first listed strength.
    Raises :class:`TransformError` naming the problem."""
    name, _, strength = str(spec).partition(":")
    if name not in TRANSFORMS:
        raise TransformError(f"unknown transform {name!r} in {spec!r}; choose one of {sorted(TRANSFORMS)}")
    if not strength:
        return name, TRANSFORMS[name].strengths[0]
    try:
        value = float(strength)
    except ValueError:
        raise TransformError(f"transform {spec!r}: the strength after ':' must be a number") from None
    problem = TRANSFORMS[name].strength_problem(value)
    if problem:
        raise TransformError(f"{spec!r}: {problem}")
    return name, value


def with_transformed_copies(
    dataset: Dataset,
    specs: Sequence[str],
    reference: ChannelStats | None = None,
    seed: int = 0,
    image_column: str = "image",
) -> Dataset:
    """``dataset`` followed by one transformed copy of every row per spec (``"name[:strength]"``), other columns
    (labels) unchanged: the images an attacker who knows the method would show the encoder, for a defence to train
    on. Transforms that need a reference (``match_*``) take ``reference``; the source statistics are the dataset's."""
    parsed = [parse_transform_spec(spec) for spec in specs]
    if not parsed:
        return dataset
    needs_source = any(TRANSFORMS[name].needs_reference for name, _ in parsed)
    for name, _ in parsed:
        _checked(name, reference)
    source = domain_stats(dataset, image_column, seed=seed) if needs_source else None

    def copies(name: str, strength: float) -> Dataset:
        def transform(batch: dict) -> dict:
            images = apply_transform(batch[image_column], name, strength, seed, reference, source)
            return {**batch, image_column: images}

        return dataset.map(transform, batched=True, batch_size=256, desc=f"transformed copies: {name} {strength:g}")

    return concatenate_datasets([dataset, *(copies(name, strength) for name, strength in parsed)])
