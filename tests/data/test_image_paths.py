"""One image-path rule for every reader: an Image value stored as ``{"bytes": None, "path": "/anywhere/p0.png"}``
(what ``Image().encode_example(str)`` and a parquet dataset keep) is opened only inside a folder the user allowed."""

from __future__ import annotations

import pytest
from datasets import ClassLabel, Dataset, DatasetDict, Features
from datasets import Image as ImageFeature
from PIL import Image

from hf_encoderlock.data import domains, lock_tensors
from hf_encoderlock.data.domains import DomainError, load_domain
from hf_encoderlock.data.lock_tensors import LockDataError
from hf_encoderlock.encoders import tiny_vit_encoder
from hf_encoderlock.lock.trainer import EncoderLockTrainer
from tests.helpers import toy_domain


@pytest.fixture(autouse=True)
def _no_allowed_folders(monkeypatch):
    """Start each case with no folder allowed (the allowance lasts for the process)."""
    monkeypatch.setattr(lock_tensors, "_ALLOWED_IMAGE_ROOTS", set(), raising=False)


def hostile(tmp_path, rows: int = 24) -> Dataset:
    """A dataset whose images are stored as paths to files outside any dataset (a user's private pictures; distinct,
    as a lock needs)."""
    secret = tmp_path / "private"
    secret.mkdir(exist_ok=True)
    for row, image in enumerate(toy_domain(rows, 9, "green")["image"]):
        image.save(secret / f"p{row}.png")
    features = Features({"image": ImageFeature(), "label": ClassLabel(names=["c0", "c1", "c2"])})
    stored = [{"bytes": None, "path": str(secret / f"p{row}.png")} for row in range(rows)]
    return Dataset.from_dict({"image": stored, "label": [i % 3 for i in range(rows)]}, features=features)


def _trainer(tiny_lock_config, tmp_path, prohibited, **kwargs):
    encoder = tiny_vit_encoder(seed=0, image_size=16, patch_size=4)
    return EncoderLockTrainer(
        encoder, tiny_lock_config(tmp_path), toy_domain(24, 0, "red"), prohibited, "red", "green", **kwargs
    )


def test_the_trainer_refuses_a_stored_path(tmp_path, tiny_lock_config):
    with pytest.raises(LockDataError, match=r"stored as a path to a file outside the dataset .*p0.png"):
        _trainer(tiny_lock_config, tmp_path, hostile(tmp_path))


def test_the_trainer_refuses_a_stored_path_outside_the_allowed_folder(tmp_path, tiny_lock_config):
    (tmp_path / "allowed").mkdir()
    with pytest.raises(LockDataError, match="outside the dataset"):
        _trainer(tiny_lock_config, tmp_path, hostile(tmp_path), allow_local_images_under=tmp_path / "allowed")
    trainer = _trainer(  # the folder holding the files, allowed by name: read
        tiny_lock_config, tmp_path, hostile(tmp_path), allow_local_images_under=tmp_path / "private"
    )
    assert len(trainer.lock_prohibited) + len(trainer.val_prohibited) == 24


def test_eval_dataset_refuses_a_stored_path(tmp_path, tiny_lock_config):
    trainer = _trainer(tiny_lock_config, tmp_path, toy_domain(24, 1, "green"))
    with pytest.raises(LockDataError, match="outside the dataset"):
        trainer.evaluate({"authorized": toy_domain(9, 2, "red"), "prohibited": hostile(tmp_path, 9)})


def test_load_domain_refuses_a_stored_path_from_a_hub_dataset(tmp_path, monkeypatch):
    data = DatasetDict(train=hostile(tmp_path), test=hostile(tmp_path, 6))
    monkeypatch.setattr(domains, "load_dataset", lambda name, config=None, **kwargs: data)
    name = "someone/parquet-images"
    with pytest.raises(DomainError, match="outside the dataset"):
        load_domain(name)
    (tmp_path / "elsewhere").mkdir()
    with pytest.raises(DomainError, match="outside the dataset"):
        load_domain(name, allow_local_images_under=tmp_path / "elsewhere")


def test_an_image_folder_domain_still_reads_its_own_files(tmp_path):
    for label in ("a", "b"):
        (tmp_path / "folder" / label).mkdir(parents=True)
        for i in range(5):
            Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(tmp_path / "folder" / label / f"{i}.png")
    dd = load_domain(tmp_path / "folder")
    assert sum(len(split) for split in dd.values()) == 10
    assert dd["train"][0]["image"].size == (8, 8)
