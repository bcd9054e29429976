"""Small deterministic image domains for tests (built in memory, no download)."""

from __future__ import annotations

import numpy as np
from datasets import ClassLabel, Dataset, Features
from datasets import Image as ImageFeature
from PIL import Image


def toy_domain(num_images: int, seed: int, style: str, size: int = 16, num_classes: int = 3) -> Dataset:
    """Class ``y`` is a bright horizontal band at row block ``y``; ``style`` changes colour and background."""
    rng = np.random.default_rng(seed)
    band = size // num_classes
    images, labels = [], []
    for index in range(num_images):
        label = index % num_classes
        pixels = rng.integers(0, 80, (size, size, 3)).astype(np.uint8)
        if style == "red":
            pixels[label * band : (label + 1) * band, :, 0] = 250
        else:
            pixels[:, :, 2] = 120
            pixels[label * band : (label + 1) * band, :, 1] = 230
        images.append(Image.fromarray(pixels))
        labels.append(label)
    features = Features({"image": ImageFeature(), "label": ClassLabel(names=[f"c{i}" for i in range(num_classes)])})
    return Dataset.from_dict({"image": images, "label": labels}, features=features)
