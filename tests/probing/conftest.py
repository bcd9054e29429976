"""Fixtures of the probing tests: a tiny ViT and two tiny image domains (``test_attacks.py`` has its own)."""

import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset, DatasetDict, Features
from datasets import Image as ImageFeature
from PIL import Image

from hf_encoderlock.encoders import tiny_vit_encoder


def image_domain(n_train, n_test, num_classes=3, seed=0):
    """A tiny image domain: class c has a bright channel c on noise (easy for any encoder)."""
    rng = np.random.default_rng(seed)

    def split(n):
        images, labels = [], []
        for i in range(n):
            label = i % num_classes
            pixels = rng.integers(0, 60, (32, 32, 3)).astype(np.uint8)
            pixels[:, :, label % 3] += 150
            images.append(Image.fromarray(pixels))
            labels.append(label)
        features = Features({"image": ImageFeature(), "label": ClassLabel(names=[f"c{k}" for k in range(num_classes)])})
        return Dataset.from_dict({"image": images, "label": labels}, features=features)

    return DatasetDict(train=split(n_train), test=split(n_test))


@pytest.fixture(scope="module")
def encoder():
    torch.set_num_threads(1)
    return tiny_vit_encoder(seed=3)  # the twin uses seed 0: it must differ from the encoder


@pytest.fixture(scope="module")
def domains():
    return {"alpha": image_domain(60, 24, seed=0), "beta": image_domain(45, 21, seed=1)}
