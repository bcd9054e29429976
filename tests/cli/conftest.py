"""Fixtures of the CLI tests: a tiny saved encoder and a tiny saved domain."""

import numpy as np
import pytest
from datasets import ClassLabel, Dataset, DatasetDict, Features, load_from_disk
from datasets import Image as ImageFeature
from PIL import Image

from hf_encoderlock.encoders import tiny_vit_encoder


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("encoder")
    tiny_vit_encoder(seed=3).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def domain_dir(tmp_path_factory):
    """A tiny saved DatasetDict: class c is a bright colour channel on noise."""
    rng = np.random.default_rng(0)
    features = Features({"image": ImageFeature(), "label": ClassLabel(names=["red", "green", "blue"])})

    def split(n):
        images, labels = [], []
        for i in range(n):
            pixels = rng.integers(0, 60, (32, 32, 3)).astype(np.uint8)
            pixels[:, :, i % 3] += 150
            images.append(Image.fromarray(pixels))
            labels.append(i % 3)
        return Dataset.from_dict({"image": images, "label": labels}, features=features)

    folder = tmp_path_factory.mktemp("domains") / "colours"
    DatasetDict(train=split(45), test=split(21)).save_to_disk(str(folder))
    return folder


@pytest.fixture(scope="module")
def renamed_domain_dir(domain_dir, tmp_path_factory):
    """The same domain saved with a user's own column names: ``pic`` and ``digit``."""
    folder = tmp_path_factory.mktemp("renamed") / "colours"
    load_from_disk(str(domain_dir)).rename_columns({"image": "pic", "label": "digit"}).save_to_disk(str(folder))
    return folder
