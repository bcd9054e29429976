"""Synthetic prohibited-like data for the zero-shot variant (the owner has no prohibited images).

A generator is anything with a ``name`` and ``generate(num_images, seed, authorized=None) -> datasets.Dataset``
(an ``image`` column, and a ``label`` column when the content has classes). Offline generators shipped here:

* :class:`DomainShiftGenerator` (``"shifts"``): the authorized images moved to other domains: random ink colours,
  procedural textured backgrounds, inverted polarity, outline style, blur or high-frequency noise. Labels are
  the authorized labels, so the lock learns to remove the authorized *content* once its appearance changes.
* :class:`ShapeGenerator` (``"shapes"``): ten procedurally drawn geometric shapes (labelled by shape).
* :class:`GlyphGenerator` (``"glyphs"``): ten rendered ASCII symbols (labelled by symbol).

:class:`TextToImageGenerator` wraps a ``diffusers`` text-to-image pipeline for owners who have ``diffusers`` and a
GPU (optional, never needed by tests). The backgrounds here (checkerboards, rings, plaids, speckle, vignettes) are
deliberately not the built-in domains' recipes, so no built-in domain is seen by a zero-shot lock.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from ...data.builtin import contrasting_colours, draw_centred, find_fonts, font_factory, luminance
from ...data.lock_tensors import combine_labelled_domains
from ...encoders import NO_REMOTE_CODE

DEFAULT_IMAGE_SIZE = 32
SUPERSAMPLE = 4  # shapes are drawn at this multiple of the image size and downsampled (anti-aliasing)
BACKGROUND_KINDS = ("checker", "rings", "plaid", "speckle", "vignette")
SHAPE_CLASSES = ("circle", "square", "triangle", "star", "cross", "ring", "diamond", "hexagon", "bar", "crescent")
GLYPH_CLASSES = ("#", "%", "&", "@", "?", "+", "=", "$", "*", "<")
MIN_INK_CONTRAST = 0.35  # least luminance difference between ink and background


class ImageGenerator(Protocol):
    """What the zero-shot variant needs from a source of synthetic prohibited-like images."""

    name: str

    def generate(self, num_images: int, seed: int, authorized: Any | None = None):
        """A ``datasets.Dataset`` with ``image`` (PIL) and, when the content has classes, ``label``."""


def _rng(name: str, seed: int) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


def _dataset(images: list[Image.Image], labels: Sequence[int] | None, class_names: Sequence[str] | None):
    from datasets import ClassLabel, Dataset, Features
    from datasets import Image as ImageFeature

    if labels is None:
        return Dataset.from_dict({"image": images}, features=Features({"image": ImageFeature()}))
    features = Features({"image": ImageFeature(), "label": ClassLabel(names=list(class_names))})
    return Dataset.from_dict({"image": images, "label": list(map(int, labels))}, features=features)


def procedural_backgrounds(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """``n`` float RGB backgrounds in [0, 1], shape ``(n, size, size, 3)``, each of a random kind of
    :data:`BACKGROUND_KINDS`, in two random colours."""
    coords = (np.arange(size) - (size - 1) / 2) / size
    yy, xx = np.meshgrid(coords, coords, indexing="ij")
    radius = np.sqrt(xx**2 + yy**2)
    first, second = rng.uniform(0, 1, size=(n, 3)), rng.uniform(0, 1, size=(n, 3))
    kinds = rng.integers(len(BACKGROUND_KINDS), size=n)
    period = rng.uniform(3, 9, size=n) / size
    angle = rng.uniform(0, np.pi, size=n)
    t = np.empty((n, size, size))
    for i in range(n):
        kind = BACKGROUND_KINDS[kinds[i]]
        if kind == "checker":
            u = np.cos(angle[i]) * xx + np.sin(angle[i]) * yy
            v = -np.sin(angle[i]) * xx + np.cos(angle[i]) * yy
            t[i] = (np.floor(u / period[i]) + np.floor(v / period[i])) % 2
        elif kind == "rings":
            t[i] = 0.5 + 0.5 * np.cos(2 * np.pi * radius / period[i])
        elif kind == "plaid":
            u = np.cos(angle[i]) * xx + np.sin(angle[i]) * yy
            v = -np.sin(angle[i]) * xx + np.cos(angle[i]) * yy
            t[i] = (0.5 + 0.5 * np.cos(2 * np.pi * u / period[i])) * (
                0.5 + 0.5 * np.cos(2 * np.pi * v / (1.7 * period[i]))
            )
        elif kind == "speckle":
            t[i] = rng.uniform(0, 1, size=(size, size))
        else:  # vignette
            t[i] = np.clip(radius / radius.max(), 0, 1) ** rng.uniform(0.5, 2.0)
    return np.clip(first[:, None, None] + (second - first)[:, None, None] * t[..., None], 0, 1)


def _compose(masks: np.ndarray, rng: np.random.Generator) -> list[Image.Image]:
    """Ink masks (``(n, size, size)`` in [0, 1]) painted in random colours over procedural backgrounds."""
    n, size = len(masks), masks.shape[1]
    backgrounds = procedural_backgrounds(rng, n, size)
    ink = contrasting_colours(luminance(backgrounds.mean(axis=(1, 2))), MIN_INK_CONTRAST, rng)
    out = backgrounds * (1 - masks[..., None]) + ink[:, None, None] * masks[..., None]
    return [Image.fromarray((255 * image).round().astype(np.uint8), "RGB") for image in out]


@dataclass
class DomainShiftGenerator:
    """The authorized images under appearance shifts (colour, texture, background, style, frequency).

    Each image gets a random ink colour over a procedural background; with the given probabilities its polarity
    is inverted, it is drawn as an outline, blurred, or overlaid with high-frequency noise. Labels are kept.
    """

    invert_probability: float = 0.3
    outline_probability: float = 0.2
    blur_probability: float = 0.2
    noise_probability: float = 0.2
    noise_std: float = 0.12
    name: str = "shifts"

    def generate(self, num_images: int, seed: int, authorized=None):
        if authorized is None or len(authorized) == 0:
            raise ValueError(
                "the 'shifts' generator moves authorized images to other domains: it needs authorized data"
            )
        rng = _rng(self.name, seed)
        rows = rng.integers(len(authorized), size=num_images)
        source = authorized.select(rows.tolist())
        size = source[0]["image"].size[0]
        masks = np.empty((num_images, size, size))
        for i, image in enumerate(source["image"]):
            grey = image.convert("L").resize((size, size))
            if rng.uniform() < self.outline_probability:
                grey = grey.filter(ImageFilter.FIND_EDGES).filter(ImageFilter.MaxFilter(3))
            if rng.uniform() < self.blur_probability:
                grey = grey.filter(ImageFilter.GaussianBlur(rng.uniform(0.6, 1.4)))
            mask = np.asarray(grey, dtype=np.float64) / 255.0
            masks[i] = 1 - mask if rng.uniform() < self.invert_probability else mask
        images = _compose(masks, rng)
        noisy = rng.uniform(size=num_images) < self.noise_probability
        for i in np.flatnonzero(noisy):
            pixels = np.asarray(images[i], dtype=np.float64) / 255.0 + rng.normal(
                0, self.noise_std, size=(size, size, 3)
            )
            images[i] = Image.fromarray((255 * np.clip(pixels, 0, 1)).round().astype(np.uint8), "RGB")
        names = authorized.features["label"].names if hasattr(authorized.features["label"], "names") else None
        num_classes = int(max(authorized["label"])) + 1
        return _dataset(
            images, [int(label) for label in source["label"]], names or [str(c) for c in range(num_classes)]
        )


def _shape_polygon(kind: str, rng: np.random.Generator) -> list[tuple[float, float]] | None:
    """Unit-scale outline of a polygonal shape (``None`` for shapes drawn with ellipses)."""
    if kind == "square":
        return [(-0.7, -0.7), (0.7, -0.7), (0.7, 0.7), (-0.7, 0.7)]
    if kind == "triangle":
        return [(0.0, -0.9), (0.85, 0.7), (-0.85, 0.7)]
    if kind == "diamond":
        return [(0.0, -0.95), (0.6, 0.0), (0.0, 0.95), (-0.6, 0.0)]
    if kind == "hexagon":
        return [(0.9 * np.cos(a), 0.9 * np.sin(a)) for a in np.arange(6) * np.pi / 3]
    if kind == "star":
        return [
            ((0.95 if k % 2 == 0 else 0.4) * np.cos(a), (0.95 if k % 2 == 0 else 0.4) * np.sin(a))
            for k, a in enumerate(np.arange(10) * np.pi / 5 - np.pi / 2)
        ]
    if kind == "cross":
        w = rng.uniform(0.2, 0.35)
        return [
            (-w, -0.9),
            (w, -0.9),
            (w, -w),
            (0.9, -w),
            (0.9, w),
            (w, w),
            (w, 0.9),
            (-w, 0.9),
            (-w, w),
            (-0.9, w),
            (-0.9, -w),
            (-w, -w),
        ]
    if kind == "bar":
        h = rng.uniform(0.15, 0.3)
        return [(-0.95, -h), (0.95, -h), (0.95, h), (-0.95, h)]
    return None


@dataclass
class ShapeGenerator:
    """Procedurally drawn geometric shapes (:data:`SHAPE_CLASSES`), random size, position and rotation."""

    image_size: int = DEFAULT_IMAGE_SIZE
    classes: tuple[str, ...] = SHAPE_CLASSES
    name: str = "shapes"

    def _mask(self, kind: str, rng: np.random.Generator) -> np.ndarray:
        big = self.image_size * SUPERSAMPLE
        canvas = Image.new("L", (big, big), 0)
        draw = ImageDraw.Draw(canvas)
        scale = big * rng.uniform(0.22, 0.4)
        centre = big / 2 + rng.uniform(-0.12, 0.12, size=2) * big
        angle = rng.uniform(0, 2 * np.pi)
        rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        polygon = _shape_polygon(kind, rng)
        if polygon is not None:
            points = (np.asarray(polygon) @ rotation.T) * scale + centre
            draw.polygon([tuple(p) for p in points], fill=255)
        else:
            box = [centre[0] - scale, centre[1] - scale, centre[0] + scale, centre[1] + scale]
            draw.ellipse(box, fill=255)
            if kind in ("ring", "crescent"):
                inner = scale * (0.6 if kind == "ring" else 0.85)
                offset = np.zeros(2) if kind == "ring" else rotation @ np.array([0.45 * scale, 0.0])
                c = centre + offset
                draw.ellipse([c[0] - inner, c[1] - inner, c[0] + inner, c[1] + inner], fill=0)
        small = canvas.resize((self.image_size, self.image_size), Image.Resampling.LANCZOS)
        return np.asarray(small, dtype=np.float64) / 255.0

    def generate(self, num_images: int, seed: int, authorized=None):
        rng = _rng(self.name, seed)
        labels = np.arange(num_images) % len(self.classes)
        rng.shuffle(labels)
        masks = np.stack([self._mask(self.classes[label], rng) for label in labels])
        return _dataset(_compose(masks, rng), labels, self.classes)


@dataclass
class GlyphGenerator:
    """Rendered ASCII symbols (:data:`GLYPH_CLASSES`; no digits or letters), installed fonts or Pillow's default."""

    image_size: int = DEFAULT_IMAGE_SIZE
    classes: tuple[str, ...] = GLYPH_CLASSES
    name: str = "glyphs"

    def generate(self, num_images: int, seed: int, authorized=None):
        rng = _rng(self.name, seed)
        fonts = find_fonts()
        get_font = font_factory(fonts)
        labels = np.arange(num_images) % len(self.classes)
        rng.shuffle(labels)
        big = self.image_size * SUPERSAMPLE
        masks = np.empty((num_images, self.image_size, self.image_size))
        for i, label in enumerate(labels):
            canvas = Image.new("L", (big, big), 0)
            font = get_font(int(rng.integers(len(fonts) + 1)), int(big * rng.uniform(0.5, 0.8)))
            centre = (big / 2 + rng.uniform(-0.1, 0.1) * big, big / 2 + rng.uniform(-0.1, 0.1) * big)
            draw_centred(ImageDraw.Draw(canvas), self.classes[label], centre, font)
            canvas = canvas.rotate(rng.uniform(-30, 30), resample=Image.Resampling.BILINEAR)
            masks[i] = (
                np.asarray(canvas.resize((self.image_size,) * 2, Image.Resampling.LANCZOS), dtype=np.float64) / 255.0
            )
        return _dataset(_compose(masks, rng), labels, self.classes)


@dataclass
class TextToImageGenerator:
    """Prompts rendered by a ``diffusers`` text-to-image pipeline (optional: needs ``diffusers`` and, in
    practice, a GPU). ``prompts`` maps a class name to its prompt; images are resized to ``image_size``.

    Example::

        generator = TextToImageGenerator({"cat": "a photo of a cat", "dog": "a photo of a dog"})
        trainer = EncoderLockTrainer(encoder, EncoderLockConfig(variant="zero-shot", ...), authorized,
                                     generator.generate(1000, seed=0))
    """

    prompts: dict[str, str]
    model_id: str = "stabilityai/sd-turbo"
    num_inference_steps: int = 1
    guidance_scale: float = 0.0
    batch_size: int = 8
    image_size: int = DEFAULT_IMAGE_SIZE
    device: str = "cuda"
    pipeline_kwargs: dict[str, Any] = field(default_factory=dict)
    name: str = "text-to-image"

    def generate(self, num_images: int, seed: int, authorized=None):
        try:
            import torch
            from diffusers import AutoPipelineForText2Image
        except ImportError as error:
            raise ImportError(
                "TextToImageGenerator needs diffusers (pip install diffusers) and, in practice, a GPU; the offline "
                "generators 'shifts', 'shapes' and 'glyphs' need neither"
            ) from error
        # no custom pipeline code from the Hub runs unless the caller's pipeline_kwargs ask for it
        options = {**NO_REMOTE_CODE, **self.pipeline_kwargs}
        pipeline = AutoPipelineForText2Image.from_pretrained(self.model_id, **options).to(self.device)
        names = list(self.prompts)
        labels = [i % len(names) for i in range(num_images)]
        images: list[Image.Image] = []
        generator = torch.Generator(self.device).manual_seed(seed)
        for start in range(0, num_images, self.batch_size):
            batch = [self.prompts[names[label]] for label in labels[start : start + self.batch_size]]
            out = pipeline(
                prompt=batch,
                num_inference_steps=self.num_inference_steps,
                guidance_scale=self.guidance_scale,
                generator=generator,
            ).images
            images += [image.convert("RGB").resize((self.image_size, self.image_size)) for image in out]
        return _dataset(images, labels, names)


GENERATORS: dict[str, type] = {"shifts": DomainShiftGenerator, "shapes": ShapeGenerator, "glyphs": GlyphGenerator}


def _image_size(authorized) -> int:
    if authorized is None or len(authorized) == 0:
        return DEFAULT_IMAGE_SIZE
    return int(authorized[0]["image"].size[0])


def generate_prohibited(generators: Sequence[str | ImageGenerator], authorized, num_images: int, seed: int):
    """Synthetic prohibited-like data from several generators (names in :data:`GENERATORS` or objects), the
    images split evenly between them; labelled parts are combined with class offsets
    (:func:`~hf_encoderlock.data.lock_tensors.combine_labelled_domains`); if any part is unlabelled, all labels are
    dropped."""
    from datasets import concatenate_datasets

    if not generators:
        raise ValueError("zero-shot needs at least one generator")
    unknown = [g for g in generators if isinstance(g, str) and g not in GENERATORS]
    if unknown:
        raise ValueError(f"unknown zero-shot generators {unknown}; choose from {sorted(GENERATORS)} or pass objects")
    size = _image_size(authorized)
    parts = {}
    for k, spec in enumerate(generators):
        generator = (
            spec
            if not isinstance(spec, str)
            else (GENERATORS[spec]() if spec == "shifts" else GENERATORS[spec](image_size=size))
        )
        count = num_images // len(generators) + (1 if k < num_images % len(generators) else 0)
        parts[generator.name] = generator.generate(count, seed, authorized)
    if all("label" in part.column_names for part in parts.values()):
        return combine_labelled_domains(parts)
    return concatenate_datasets([part.select_columns(["image"]) for part in parts.values()])
